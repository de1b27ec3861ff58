# Run from a clone where `make pipeline` ran the default experiment, with lat.yaml beside params.yaml
# (its `extends:` pointed at the checkout's params.yaml) and measure.py in OUT.
set -ex
OUT=${OUT:-/tmp/latval}
B=results/peta/alm_r50h/baseline/model.pt
grep -o -w -E 'avx2|avx512f|avx512_vnni|avx512_bf16|amx_tile' /proc/cpuinfo | sort -u | tr '\n' ' '; echo
lwpar latency --params lat.yaml --model $B --variant lwalm --target local_cpu --out $OUT/latency.json
for v in lat12 lat135 lat15; do
  lwpar decompose --params lat.yaml --model $B --variant $v --out $OUT/$v/compressed.pt --table $OUT/$v/layers.csv \
    --sensitivity results/peta/alm_r50h/lwalm/sensitivity.json --latency-table $OUT/latency.json
done
python measure.py
