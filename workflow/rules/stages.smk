# One rule per stage of the pipeline (src/lwpar/pipeline/table.py: `stages`), in its order. Everything a
# rule says comes from the stage's entry: adding a stage adds its rule.
for _stage in STAGES.values():

    rule:
        name:
            _stage.name
        input:
            unpack(job_inputs(_stage.name)),
            modules=_stage.module_files(),
        output:
            **outputs(_stage.name),
        params:
            values=param_values(_stage.name),
            cmd=command(_stage.name),
        conda:
            "../envs/lwpar.yaml"
        log:  # per experiment (its results folder), so that two params files never share a log
            _stage.log_pattern(f"logs/{P['paths']['results']}"),
        benchmark:
            _stage.log_pattern(f"logs/{P['paths']['results']}/benchmarks").removesuffix(".log") + ".tsv"
        wildcard_constraints:
            **_stage.constraints(P),
        threads: rule_threads(_stage)
        resources:
            **rule_resources(_stage),
        localrule: _stage.local
        shell:
            "{params.cmd} > {log} 2>&1"

    workflow.get_rule(_stage.name).docstring = _stage.doc
