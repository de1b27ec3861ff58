rule sensitivity:
    """Score the baseline with one layer at a time factorized (measured rank policies)."""
    input:
        unpack(job_inputs("sensitivity")),
        modules=STAGES["sensitivity"].module_files(),
    output:
        **outputs("sensitivity"),
    params:
        values=param_values("sensitivity"),
        cmd=command("sensitivity"),
    conda:
        "../envs/lwpar.yaml"
    wildcard_constraints:
        variant=pipeline.variant_pattern(P, "sensitivity"),
    log:
        "logs/sensitivity/{dataset}/{model}/{variant}.log",
    benchmark:
        "logs/benchmarks/sensitivity/{dataset}/{model}/{variant}.tsv"
    threads: HEAVY_THREADS
    resources:
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
        runtime=lambda wildcards, attempt: 240 * attempt,
        gpu=1,  # hundreds of validation passes
    shell:
        "{params.cmd} > {log} 2>&1"


rule decompose:
    """Factorize the baseline's layers as the variant's recipe says."""
    input:
        unpack(job_inputs("decompose")),
        modules=STAGES["decompose"].module_files(),
    output:
        **outputs("decompose"),
    params:
        values=param_values("decompose"),
        cmd=command("decompose"),
    conda:
        "../envs/lwpar.yaml"
    wildcard_constraints:
        variant=pipeline.variant_pattern(P, "decompose"),
    log:
        "logs/decompose/{dataset}/{model}/{variant}.log",
    benchmark:
        "logs/benchmarks/decompose/{dataset}/{model}/{variant}.tsv"
    threads: HEAVY_THREADS
    resources:
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
        runtime=lambda wildcards, attempt: 60 * attempt,
    shell:
        "{params.cmd} > {log} 2>&1"


rule prune:
    """Prune the baseline's channels (torch-pruning) to the variant's MAC budget, or zero weights."""
    input:
        unpack(job_inputs("prune")),
        modules=STAGES["prune"].module_files(),
    output:
        **outputs("prune"),
    params:
        values=param_values("prune"),
        cmd=command("prune"),
    conda:
        "../envs/lwpar.yaml"
    wildcard_constraints:
        variant=pipeline.variant_pattern(P, "prune"),
    log:
        "logs/prune/{dataset}/{model}/{variant}.log",
    benchmark:
        "logs/benchmarks/prune/{dataset}/{model}/{variant}.tsv"
    threads: HEAVY_THREADS
    resources:
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
        runtime=lambda wildcards, attempt: 60 * attempt,
    shell:
        "{params.cmd} > {log} 2>&1"


rule finetune:
    """Fine-tune a compressed variant (BN recalibration, optional distillation)."""
    input:
        unpack(job_inputs("finetune")),
        modules=STAGES["finetune"].module_files(),
    output:
        **outputs("finetune"),
    params:
        values=param_values("finetune"),
        cmd=command("finetune"),
    conda:
        "../envs/lwpar.yaml"
    wildcard_constraints:
        # the experiment's variants only: its output pattern would also match baseline/model.pt
        variant=pipeline.variant_pattern(P, "finetune"),
    log:
        "logs/finetune/{dataset}/{model}/{variant}.log",
    benchmark:
        "logs/benchmarks/finetune/{dataset}/{model}/{variant}.tsv"
    threads: HEAVY_THREADS
    resources:
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
        runtime=lambda wildcards, attempt: 120 * attempt,
        gpu=1,
    shell:
        "{params.cmd} > {log} 2>&1"
