# lwpar pipeline. The stages, their inputs, outputs, parameters, commands and resources are defined
# once in src/lwpar/pipeline/ (the stage table: table.py); dvc.yaml and the SLURM profile are generated
# from the same definition.
#
#   snakemake --cores 8                                           # the default experiment (params.yaml)
#   snakemake --cores 2 --config params=workflow/params/smoke.yaml  # another params file
#   snakemake --profile profiles/slurm                            # on a SLURM cluster


include: "workflow/rules/common.smk"
include: "workflow/rules/stages.smk"


rule all:
    default_target: True
    input:
        final_targets(P),
