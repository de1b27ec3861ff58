# Run from a clone where `make pipeline` ran the default experiment:
#   cp lat.yaml measure.py <clone>/ && cd <clone> && OUT=/tmp/latcal bash run.sh
# Plans each variant of lat.yaml from one latency table and the lwalm sensitivity cache, then times
# the baseline, the MAC-planned lwalm and the plans in one interleaved run (measure.py).
set -ex
export OUT=${OUT:-/tmp/latcal}
B=results/peta/alm_r50h/baseline/model.pt
grep -o -w -E 'avx2|avx512f|avx512_vnni|avx512_bf16|amx_tile' /proc/cpuinfo | sort -u | tr '\n' ' '; echo
lwpar latency --params lat.yaml --model $B --variant lwalm --target local_cpu --out $OUT/latency.json
for v in lat12 lat135 lat15 lat17 lat19; do
  lwpar decompose --params lat.yaml --model $B --variant $v --out $OUT/$v/compressed.pt --table $OUT/$v/layers.csv \
    --sensitivity results/peta/alm_r50h/lwalm/sensitivity.json --latency-table $OUT/latency.json || true  # may be out of reach
done
python measure.py
