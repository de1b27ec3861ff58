rule train:
    """Train the baseline model on the prepared dataset (resumes from its checkpoint)."""
    input:
        unpack(job_inputs("train")),
        modules=STAGES["train"].module_files(),
    output:
        **outputs("train"),
    params:
        values=param_values("train"),
        cmd=command("train"),
    conda:
        "../envs/lwpar.yaml"
    log:
        "logs/train/{dataset}/{model}.log",
    benchmark:
        "logs/benchmarks/train/{dataset}/{model}.tsv"
    threads: HEAVY_THREADS
    resources:
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
        runtime=lambda wildcards, attempt: 120 * attempt,
        gpu=1,
    shell:
        "{params.cmd} > {log} 2>&1"
