# lwpar pipeline. The stages, their inputs, outputs, parameters and commands are defined once in
# src/lwpar/pipeline.py; dvc.yaml is generated from the same definition.
#
#   snakemake --cores 8                                           # the default experiment (params.yaml)
#   snakemake --cores 2 --config params=workflow/params/smoke.yaml  # another params file
#   snakemake --profile profiles/slurm                            # on a SLURM cluster


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/compress.smk"
include: "workflow/rules/deploy.smk"


rule all:
    default_target: True
    input:
        final_targets(P),
