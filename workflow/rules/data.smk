rule data:
    """Download (or take from the mirror), extract, parse, check and split one dataset."""
    input:
        modules=STAGES["data"].module_files(),
    output:
        **outputs("data"),
    params:
        values=param_values("data"),
        cmd=command("data"),
    conda:
        "../envs/lwpar.yaml"
    log:
        "logs/data/{dataset}.log",
    benchmark:
        "logs/benchmarks/data/{dataset}.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "{params.cmd} > {log} 2>&1"


localrules: data
