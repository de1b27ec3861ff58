#!/bin/bash
# The extension's drivers as run (scratch workspace /tmp/fresh/main). The first one ran phases 1-3; it was
# stopped during phase 3 and the second one, started then, waited for phase 3's snakemake (its pid) and ran
# the remaining variants (the 70 % and the 400-update weights fit cut to fit the session), then everything.
# fit sweep extension: phases in order of importance, then the rest (profile, report)
cd /tmp/fresh/main; export PATH=/tmp/fresh/main/.venv/bin:$PATH
SM=".venv/bin/snakemake --cores 2 --keep-going"; CFG="--config params=workflow/params/fit_sweep.yaml"
R=results/fit_sweep/peta/alm_r50h
lscpu | grep Flags | tr ' ' '\n' | grep -E "avx2|avx512f|avx512_vnni|amx_tile" | tr '\n' ' '; echo
for phase in "svd_cov_bw_30_kd cpd_epc_cov_bw_30_kd svd_cov_bw_30_bn cpd_epc_cov_bw_30_bn" \
             "svd_30_bn cpd_epc_30_bn prune_l2_rec_30_bn" \
             "cpd_epc_cov_bw_kd400 control_kd400" \
             "svd_70_bn svd_cov_70_bn cpd_epc_70_bn cpd_epc_cov_70_bn prune_l2_rec_70_bn" \
             "cpd_epc_kd400"; do
  t=""; for v in $phase; do t="$t $R/$v/eval/metrics.json"; done
  echo "== $(date -u +%H:%M:%S) phase: $phase"
  $SM $t $CFG > /tmp/sweep2/phase_$(echo $phase | cut -d' ' -f1).log 2>&1; echo "rc=$?"
done
echo "== $(date -u +%H:%M:%S) rest"
$SM $CFG > /tmp/sweep2/rest.log 2>&1; echo "rc=$?"
echo "== $(date -u +%H:%M:%S) done"

# ---- second driver ----
cd /tmp/fresh/main; export PATH=/tmp/fresh/main/.venv/bin:$PATH
while kill -0 21586 2>/dev/null; do sleep 10; done
echo "== $(date -u +%H:%M:%S) phase 3 ended"
SM=".venv/bin/snakemake --cores 2 --keep-going"; CFG="--config params=workflow/params/fit_sweep.yaml"
R=results/fit_sweep/peta/alm_r50h
t=""; for v in svd_cov_70_bn prune_l2_rec_30_bn;     do t="$t $R/$v/eval/metrics.json"; done
echo "== $(date -u +%H:%M:%S) phase 4"
$SM $t $CFG > /tmp/sweep2/phase4b.log 2>&1; echo "rc=$?"
echo "== $(date -u +%H:%M:%S) rest"
$SM $CFG > /tmp/sweep2/rest.log 2>&1; echo "rc=$?"
echo "== $(date -u +%H:%M:%S) done"
