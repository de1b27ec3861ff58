rule export:
    """Export to ONNX and check parity with PyTorch on real test images."""
    input:
        unpack(job_inputs("export")),
        modules=STAGES["export"].module_files(),
    output:
        **outputs("export"),
    params:
        values=param_values("export"),
        cmd=command("export"),
    conda:
        "../envs/lwpar.yaml"
    log:
        "logs/export/{dataset}/{model}/{name}.log",
    benchmark:
        "logs/benchmarks/export/{dataset}/{model}/{name}.tsv"
    wildcard_constraints:
        name="[A-Za-z0-9_]+",
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=lambda wildcards, attempt: 20 * attempt,
    shell:
        "{params.cmd} > {log} 2>&1"


rule quantize:
    """INT8 quantization of an exported model with ONNX Runtime."""
    input:
        unpack(job_inputs("quantize")),
        modules=STAGES["quantize"].module_files(),
    output:
        **outputs("quantize"),
    params:
        values=param_values("quantize"),
        cmd=command("quantize"),
    conda:
        "../envs/lwpar.yaml"
    log:
        "logs/quantize/{dataset}/{model}/{name}.log",
    benchmark:
        "logs/benchmarks/quantize/{dataset}/{model}/{name}.tsv"
    wildcard_constraints:
        name="[A-Za-z0-9_]+",
    threads: HEAVY_THREADS
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=lambda wildcards, attempt: 30 * attempt,
    shell:
        "{params.cmd} > {log} 2>&1"


rule evaluate:
    """Score the deployed ONNX artifact on the test split."""
    input:
        unpack(job_inputs("evaluate")),
        modules=STAGES["evaluate"].module_files(),
    output:
        **outputs("evaluate"),
    params:
        values=param_values("evaluate"),
        cmd=command("evaluate"),
    conda:
        "../envs/lwpar.yaml"
    log:
        "logs/evaluate/{dataset}/{model}/{name}.log",
    benchmark:
        "logs/benchmarks/evaluate/{dataset}/{model}/{name}.tsv"
    wildcard_constraints:
        name="[A-Za-z0-9_+]+",
    threads: HEAVY_THREADS
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=lambda wildcards, attempt: 30 * attempt,
    shell:
        "{params.cmd} > {log} 2>&1"


rule profile:
    """Latency, memory, size and MACs of every artifact of a model on a target, interleaved."""
    input:
        unpack(job_inputs("profile")),
        modules=STAGES["profile"].module_files(),
    output:
        **outputs("profile"),
    params:
        values=param_values("profile"),
        cmd=command("profile"),
    conda:
        "../envs/lwpar.yaml"
    log:
        "logs/profile/{dataset}/{model}/{target}.log",
    benchmark:
        "logs/benchmarks/profile/{dataset}/{model}/{target}.tsv"
    threads: workflow.cores
    resources:
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
        runtime=lambda wildcards, attempt: 60 * attempt,
    shell:
        "{params.cmd} > {log} 2>&1"


rule card:
    """An artifact's model card from its metadata, evaluation, profiles and the baseline's records."""
    input:
        unpack(job_inputs("card")),
        modules=STAGES["card"].module_files(),
    output:
        **outputs("card"),
    params:
        values=param_values("card"),
        cmd=command("card"),
    conda:
        "../envs/lwpar.yaml"
    log:
        "logs/card/{dataset}/{model}/{name}.log",
    benchmark:
        "logs/benchmarks/card/{dataset}/{model}/{name}.tsv"
    wildcard_constraints:
        name="[A-Za-z0-9_+]+",
    shell:
        "{params.cmd} > {log} 2>&1"


rule report:
    """Comparison tables and plots from every evaluation and profile."""
    input:
        unpack(job_inputs("report")),
        modules=STAGES["report"].module_files(),
    output:
        **{k: report(v, category="comparison") for k, v in outputs("report").items()},
    params:
        values=param_values("report"),
        cmd=command("report"),
    conda:
        "../envs/lwpar.yaml"
    log:
        "logs/report.log",
    benchmark:
        "logs/benchmarks/report.tsv"
    shell:
        "{params.cmd} > {log} 2>&1"


localrules: report, card
