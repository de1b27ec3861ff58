rule evaluate:
    """Score the trained model on the test split."""
    input:
        unpack(job_inputs("evaluate")),
        modules=STAGES["evaluate"].module_files(),
    output:
        **outputs("evaluate"),
    params:
        values=param_values("evaluate"),
        cmd=command("evaluate"),
    log:
        "logs/evaluate/{dataset}/{model}.log",
    benchmark:
        "benchmarks/evaluate/{dataset}/{model}.tsv"
    threads: 2
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=lambda wildcards, attempt: 30 * attempt,
    shell:
        "{params.cmd} > {log} 2>&1"
