"""The cluster profile on a real (one-node, loopback) SLURM cluster.

The smoke configuration runs through `profiles/slurm` twice, on a copy of the shared local smoke run
with one variant's fine-tuning removed (its jobs from there on are left to do). The first run has a
target whose command prefix fails, so the first job that runs on the target, the latency table,
fails on the cluster: the workflow must report it, retry it once with more memory, finish the
removed variant's jobs, which do not need it, and stop without running the profile (which times the
variant planned from the table) or the report. The second run, with the target repaired, must submit
only the table, the latency-planned variant's jobs that waited for it, and the profile: everything
that finished is kept. Every job that ran went through the scheduler (its id in the job-completion
records) or is a local rule, and the metrics must equal the local run's.

Overrides beyond the profile are only what this cluster needs: its partition, no account, squeue for
status (no accounting daemon here), a short first status check, and this node's 2 CPUs and no GPU.
"""

from __future__ import annotations

import csv
import json
import os
import re
import time
from pathlib import Path

import pytest
import yaml

from conftest import BIN, ROOT, SUMMARY_LINES, copy_run, run_command
from lwpar import pipeline
from lwpar.config import load_params
from slurm_cluster import LocalSlurm, Unavailable

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(3600)]

SUBMITTED = re.compile(r"SLURM jobid (\d+) \(log: (\S+)\)")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"), memory_mb=20000)
    try:
        cluster.start()
    except Unavailable as exc:
        if os.environ.get("LWPAR_REQUIRE_SLURM"):
            pytest.fail(f"the SLURM test must run here (LWPAR_REQUIRE_SLURM is set): {exc}")
        pytest.skip(f"no SLURM cluster: {exc}")
    try:
        yield cluster
    finally:
        cluster.stop()


def _snakemake_on_cluster(work: Path, cluster: LocalSlurm, params_file: str):
    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    cores = os.cpu_count() or 1
    # this node's CPUs cap the profile's per-rule requests; it has no GPU
    capped = {rule: min(n, cores) for rule, n in profile["set-threads"].items()}
    args = [
        str(BIN / "snakemake"), "--profile", "profiles/slurm", "--config", f"params={params_file}",
        # this cluster, not the profile's business
        "--default-resources", f"slurm_partition={cluster.partition}",
        "--slurm-no-account", "--slurm-status-command", "squeue",
        "--slurm-init-seconds-before-status-checks", "5",
        "--set-threads", *[f"{rule}={n}" for rule, n in capped.items()],
        "--set-resources", *[f"{rule}:cpus_per_task={n}" for rule, n in capped.items()],
        "train:gpu=0", "finetune:gpu=0", "sensitivity:gpu=0",
    ]
    return run_command(args, work, timeout=1500)


def _submitted(output: str) -> dict[str, str]:
    """SLURM job id -> rule, as the executor announced each submission."""
    jobs = {}
    for job_id, log in SUBMITTED.findall(output):
        rule = re.search(r"rule_(\w+?)/", log)
        jobs[job_id] = rule.group(1) if rule else log
    return jobs


def _mem_mb(tres: str) -> float:
    value = re.search(r"mem=([\d.]+)([MG])", tres)
    return float(value.group(1)) * (1024 if value.group(2) == "G" else 1)


def test_smoke_pipeline_on_slurm(cluster, smoke_run, tmp_path):
    local_work, params = smoke_run
    work = copy_run(local_work, tmp_path / "cluster")
    results = Path(params["paths"]["results"])
    for output in ("model.pt", "history.csv", "finetune.json"):  # the rest of svd_r50's branch is left to do
        (work / results / "peta" / "alm_effl0" / "svd_r50" / output).unlink()
    for output in pipeline.stages(params)["report"].outputs.values():  # made again only if the run gets there
        (work / output).unlink()
    broken = yaml.safe_load((work / "smoke.yaml").read_text())
    broken["profile"]["targets"]["local_cpu"]["command_prefix"] = "false"
    # Same params file name in both runs: it is part of every job's command.
    (work / "smoke.yaml").write_text(yaml.safe_dump(broken, sort_keys=False))

    # Run 1: the latency table fails on the target, is retried with more memory, fails; every job that
    # does not wait for it succeeds, and the profile, which does, is never submitted.
    started = time.monotonic()
    first = _snakemake_on_cluster(work, cluster, "smoke.yaml")
    first_seconds = time.monotonic() - started
    out1 = first.stdout + first.stderr
    assert first.returncode != 0, out1[-3000:]
    assert "Error in rule latency" in out1, out1[-3000:]
    assert not (work / params["paths"]["results"] / "comparison.csv").exists(), "the report must not run"
    submitted1 = _submitted(out1)
    records = {job["JobId"]: job for job in cluster.completed_jobs()}
    assert set(submitted1) <= set(records), f"jobs missing from the scheduler's records: {set(submitted1) - set(records)}"
    attempts = sorted((job_id for job_id, rule in submitted1.items() if rule == "latency"), key=int)
    assert len(attempts) == 2, submitted1
    assert all(records[j]["JobState"] == "FAILED" for j in attempts)
    first_mem, retry_mem = (_mem_mb(records[j]["Tres"]) for j in attempts)
    assert retry_mem == 2 * first_mem, (first_mem, retry_mem)
    assert "profile" not in submitted1.values(), submitted1
    others = [j for j, rule in submitted1.items() if rule != "latency"]
    assert sorted(submitted1[j] for j in others) == ["evaluate", "export", "finetune"], submitted1  # svd_r50's
    assert all(records[j]["JobState"] == "COMPLETED" for j in others)

    # Run 2: the target repaired; only the latency table, the latency-planned variant's jobs that
    # waited for it, and the profile go to the cluster, then the local report.
    (work / "smoke.yaml").write_text((local_work / "smoke.yaml").read_text())
    started = time.monotonic()
    second = _snakemake_on_cluster(work, cluster, "smoke.yaml")
    second_seconds = time.monotonic() - started
    out2 = second.stdout + second.stderr
    assert second.returncode == 0, out2[-3000:]
    submitted2 = _submitted(out2)
    waited = {stage.name for stage, wildcards in pipeline.grid(load_params(work / "smoke.yaml"))
              if not stage.local and "svd_lat" in (wildcards.get("variant"), wildcards.get("name"))}
    assert waited == {"decompose", "finetune", "export", "evaluate"}, waited
    assert sorted(submitted2.values()) == sorted(["latency", "profile", *waited]), submitted2
    records = {job["JobId"]: job for job in cluster.completed_jobs()}
    assert all(records[j]["JobState"] == "COMPLETED" for j in submitted2)

    # Every job left to do that is no local rule (cards, report) went through the scheduler, once successfully.
    done = sorted(rule for j, rule in {**submitted1, **submitted2}.items() if records[j]["JobState"] == "COMPLETED")
    assert done == sorted(["finetune", "export", "evaluate", "latency", "profile", *waited])
    ids = ", ".join(f"{j} {rule} {records[j]['JobState']}" for j, rule in
                    sorted({**submitted1, **submitted2}.items(), key=lambda item: int(item[0])))
    SUMMARY_LINES.append(f"SLURM test: scheduler job ids: {ids}; run 1 (the latency table fails) {first_seconds:.0f} s, "
                         f"run 2 (the table, the jobs waiting for it, the profile) {second_seconds:.0f} s")

    # Same seed, same metrics as the local run, for every scored artifact. A latency-planned variant's ranks
    # follow the timings measured in each run, so its metrics must match only where both runs chose the same plan.
    for metrics in sorted((local_work / results).rglob("eval/metrics.json")):
        relative = metrics.relative_to(local_work)
        plans = [_latency_plan(root / relative.parent.parent, params) for root in (local_work, work)]
        if plans[0] != plans[1]:
            SUMMARY_LINES.append(f"SLURM test: {relative.parent.parent.name}'s latency plan differs from the local run's "
                                 f"(timings differ), its metrics not compared")
            continue
        assert json.loads((work / relative).read_text()) == json.loads(metrics.read_text()), relative
    assert (work / results / "comparison.csv").is_file()
    assert (work / results / "comparison.md").is_file()


def _latency_plan(variant_dir: Path, params: dict) -> list | None:
    """The (layer, method, rank) rows of the latency plan an artifact derives from (through its base variants
    and quantized copies), or None if none does."""
    name = variant_dir.name.split("+")[0]
    while name in params["variants"]:
        variant = params["variants"][name]
        if (variant.get("decompose") or {}).get("rank", {}).get("policy") == "latency":
            break
        name = variant.get("base")
    else:
        return None
    with open(variant_dir.parent / name / "layers.csv", newline="") as f:
        return [(row["layer"], row["method"], row["rank"]) for row in csv.DictReader(f)]
