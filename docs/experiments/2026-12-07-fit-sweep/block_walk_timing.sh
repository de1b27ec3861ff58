# Times block reconstruction and the sequential fit on the fit sweep's models, alone, with lwpar on PATH.
set -e
cd "${1:?usage: block_walk_timing.sh <clone holding the fit sweep results> [scratch folder]}"
L=lwpar
mkdir -p "${2:-/tmp/measure}"
P=workflow/params/fit_sweep.yaml
R=results/fit_sweep/peta/alm_r50h
grep -o 'avx512[a-z_0-9]*\|amx[a-z_]*\|avx2' /proc/cpuinfo | sort -u | tr '\n' ' '; echo
/usr/bin/time -f "%e s %M KB" $L finetune --params $P --model $R/svd_cov_bw_bn/compressed.pt --teacher $R/baseline/model.pt --dataset-dir data/prepared/peta.manifest.json --variant svd_cov_bw_bn --out ${2:-/tmp/measure}/svd_cov_bw_bn > ${2:-/tmp/measure}/finetune_bw.log 2>&1
/usr/bin/time -f "%e s %M KB" $L decompose --params $P --model $R/baseline/model.pt --variant svd_seq_bn --out ${2:-/tmp/measure}/svd_seq_bn/compressed.pt --table ${2:-/tmp/measure}/svd_seq_bn/layers.csv --calibration $R/baseline/calibration.pt --dataset-dir data/prepared/peta.manifest.json > ${2:-/tmp/measure}/decompose_seq.log 2>&1
echo done
