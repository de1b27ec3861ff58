#!/bin/bash
# issue 44: the same artifacts scored on ONNX Runtime and OpenVINO (FP32 at batch 64 and 1; INT8 from both quantizers)
set -e
cd /tmp/fresh/main
L=/work/main/.venv/bin/lwpar
R=results/fit_sweep/peta/alm_r50h
O=/tmp/ov44
D=data/prepared/peta.manifest.json
P=workflow/params/fit_sweep.yaml
cat > $O/b1.yaml <<YAML
extends: /tmp/fresh/main/workflow/params/fit_sweep.yaml
evaluate: {batch_size: 1}
YAML
cat > $O/b64.yaml <<YAML
extends: /tmp/fresh/main/workflow/params/fit_sweep.yaml
evaluate: {batch_size: 64}
YAML
cat > $O/nncf.yaml <<YAML
extends: /tmp/fresh/main/workflow/params/fit_sweep.yaml
quantize: {engine: nncf}
YAML
lscpu | grep Flags | tr ' ' '\n' | grep -E "avx2|avx512f|avx512_vnni|amx_tile" | tr '\n' ' '; echo
for v in baseline cpd_epc_cov_bw_bn prune_l2_rec_bn; do
  mkdir -p $O/$v
  [ -f $O/$v/model.onnx ] || $L export --params $P --model $R/$v/model.pt --dataset-dir $D --out $O/$v/model.onnx --parity-out $O/$v/parity.json
done
[ -f $O/baseline+int8/model.onnx ] || { mkdir -p $O/baseline+int8; /usr/bin/time -f "ort quantize %e s" $L quantize --params $P --model $O/baseline/model.onnx --dataset-dir $D --out $O/baseline+int8/model.onnx --errors-out $O/baseline+int8/node_error.csv; }
[ -f $O/baseline+nncf/model.onnx ] || { mkdir -p $O/baseline+nncf; /usr/bin/time -f "nncf quantize %e s" $L quantize --params $O/nncf.yaml --model $O/baseline/model.onnx --dataset-dir $D --out $O/baseline+nncf/model.onnx --errors-out $O/baseline+nncf/node_error.csv; }
for v in baseline baseline+int8 baseline+nncf; do
  for rt in onnxruntime openvino; do
    for pf in $O/b64.yaml $O/b1.yaml; do
      b=$([ $pf = $O/b64.yaml ] && echo 64 || echo 1)
      case $v in *int8|*nncf) [ $b = 1 ] && continue;; esac
      [ $rt = onnxruntime ] && [ $b = 1 ] && continue  # ONNX Runtime's scores do not depend on the batch (checked at 64 against the pipeline's 128)
      out=$O/$v/eval-$rt-b$b
      [ -f $out/metrics.json ] || /usr/bin/time -f "$v $rt b$b %e s" $L evaluate --params $pf --dataset-dir $D --model $O/$v/model.onnx --split test --out-dir $out --runtime $rt
    done
  done
done
echo done
