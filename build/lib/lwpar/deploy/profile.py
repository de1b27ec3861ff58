"""A profile: every artifact of one dataset and model measured on a target in one interleaved run
(`benchmark`), with the backbone/head split, file sizes, parameters and MACs, and each artifact's
speed-up against `baseline` (the ratio of medians, and the median and quartiles of the per-round
ratios) set against its MAC reduction (1.0 = the speed-up the MACs promise)."""

from __future__ import annotations

from pathlib import Path

from lwpar.core.errors import LwparError
from lwpar.core.machine import machine_info
from lwpar.core.names import fp32_name
from lwpar.deploy.benchmark import benchmark, paired_speedup

SETTINGS = ("batch_sizes", "threads", "warmup", "rounds", "iters_per_round")


def target_config(cfg: dict, name: str) -> dict:
    """A target of params `profile.targets`; an unknown name is an LwparError listing the known ones."""
    if name not in cfg["targets"]:
        raise LwparError(f"--target {name!r}: not in params profile.targets ({', '.join(cfg['targets'])})")
    return cfg["targets"][name]


def profile(artifacts: dict[str, Path], backbones: dict[str, Path], counts: dict[str, dict], target_name: str,
            cfg: dict) -> dict:
    """`artifacts` and `backbones`: ONNX files by artifact name (one must be `baseline`); `counts`: each
    FP32 model's {"params", "macs"} (INT8 artifacts use their source's); `cfg`: params `profile`."""
    target = target_config(cfg, target_name)
    if "baseline" not in artifacts:
        raise LwparError("--onnx: one artifact must be named baseline (speed-ups are measured against it)")
    for path in artifacts.values():
        if not path.is_file():
            raise LwparError(f"{path}: ONNX model not found")
    measured = benchmark({**artifacts, **{f"{n}/backbone": p for n, p in backbones.items()}}, target, cfg)
    results = {name: measured[name] for name in artifacts}
    for name in backbones:  # latency split: the backbone alone, and what the heads add on top
        for row, body in zip(results[name]["latency"], measured[f"{name}/backbone"]["latency"]):
            row["backbone_ms_median"] = body["median_ms"]
            row["heads_ms_median"] = row["median_ms"] - body["median_ms"]
    base = results["baseline"]
    for name, result in results.items():
        source = fp32_name(name)
        result.update(file=str(artifacts[name]), size_mb=artifacts[name].stat().st_size / 1e6, **counts.get(source, {}))
        for row, base_row in zip(result["latency"], base["latency"]):
            row["speedup"] = base_row["median_ms"] / row["median_ms"]
            row.update(paired_speedup(base_row["round_ms"], row["round_ms"]))
            if "macs" in result and "macs" in counts.get("baseline", {}):
                row["mac_reduction"] = counts["baseline"]["macs"] / result["macs"]
                row["speedup_per_mac_reduction"] = row["speedup"] / row["mac_reduction"]
    return {"target": target_name, "target_config": target,
            "settings": {k: cfg[k] for k in SETTINGS}, "machine": machine_info(), "variants": results}
