# As run, 2026-12-07 (see ../2026-12-07-qat.md), in the fit sweep's workspace.
# 1. the workspace brought to e538e6a, its outputs marked current
git fetch /work/main main && git checkout -f FETCH_HEAD
snakemake --touch --cores 2 --config params=workflow/params/fit_sweep.yaml
# 2. the _qat variants and the INT8 list added to workflow/params/fit_sweep.yaml (as committed), then
snakemake --cores 2 --keep-going --omit-from profile --config params=workflow/params/fit_sweep.yaml
snakemake --cores 2 --keep-going --config params=workflow/params/fit_sweep.yaml
# 3. at d367f39 (labels), the report again
snakemake --touch --cores 2 --config params=workflow/params/fit_sweep.yaml
snakemake --cores 2 --forcerun report --config params=workflow/params/fit_sweep.yaml -- results/fit_sweep/comparison.csv
