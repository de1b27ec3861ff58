#!/bin/bash
# INT8 of the fit sweep's CP-ALS and CPD-EPC models with and without factor-chain equalization:
#   measure.sh <fit sweep workspace> [output folder]
HERE=$(cd "$(dirname "$0")" && pwd); OUT=${2:-/tmp/int8-equalization}; cd "$1"
export OMP_NUM_THREADS=1  # lwpar on PATH (the project venv)
P=workflow/params/fit_sweep.yaml; D=data/prepared/peta.manifest.json; R=results/fit_sweep/peta/alm_r50h
grep -o -w -E 'avx2|avx512f|avx512_vnni|amx_tile' /proc/cpuinfo | sort -u | tr '\n' ' '; echo
for v in cp_als_bn cpd_epc_bn; do
  o=$OUT/$v; mkdir -p $o/plain $o/eq
  date -u +%T
  python "$HERE/equalize_chains.py" $R/$v/model.pt $o/eq/model.pt
  lwpar export --params $P --model $o/eq/model.pt --dataset-dir $D --out $o/eq/model.onnx --parity-out $o/eq/parity.json | tail -1
  for k in plain eq; do
    src=$R/$v/model.onnx; [ $k = eq ] && src=$o/eq/model.onnx
    lwpar quantize --params $P --model $src --dataset-dir $D --out $o/$k/int8.onnx | tail -1
    lwpar evaluate --params $P --dataset-dir $D --model $o/$k/int8.onnx --split test --out-dir $o/$k/eval --thresholds-out $o/$k/thresholds.json | tail -1
  done
  lwpar evaluate --params $P --dataset-dir $D --model $o/eq/model.onnx --split test --out-dir $o/eq/eval_fp32 --thresholds-out $o/eq/thresholds_fp32.json | tail -1
done
date -u +%T
