"""Measure every ONNX artifact of one dataset and model on a target: latency (median, p90, IQR) per
batch size and thread count, images per second, peak resident memory, file size, parameters and
MACs (torch.utils.flop_counter), measured speed-up against `baseline` (the ratio of medians, and the
median and quartiles of the per-round ratios) and MAC reduction, and their ratio (1.0 = the speed-up
the MACs promise). Machine, instruction sets, library versions and thread
settings go into the result file. Variants are measured interleaved in one run.
"""

from __future__ import annotations

from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("--onnx", required=True, nargs="+", metavar="NAME=PATH",
                        help="artifacts, each as variant name = ONNX file; one must be `baseline`")
    parser.add_argument("--backbone", nargs="*", default=[], metavar="NAME=PATH",
                        help="backbone-only ONNX files (lwpar export --backbone-out) for the backbone/head split")
    parser.add_argument("--torch", nargs="*", default=[], metavar="NAME=PATH",
                        help="PyTorch model files for parameter and MAC counts (INT8 variants use their source's)")
    parser.add_argument("--target", required=True, help="target name in params profile.targets")
    parser.add_argument("--out", required=True, type=Path, help="result file (JSON)")


def _pairs(items, what):
    from lwpar import LwparError

    pairs = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            raise LwparError(f"--{what} {item!r}: expected NAME=PATH")
        pairs[name] = Path(path)
    return pairs


def run(args, params) -> None:
    from lwpar import LwparError
    from lwpar.complexity import count_macs, count_params
    from lwpar.io import write_json
    from lwpar.profile import benchmark, machine_info, paired_speedup
    from lwpar.structure import load_model

    cfg = params["profile"]
    if args.target not in cfg["targets"]:
        raise LwparError(f"--target {args.target!r}: not in params profile.targets ({', '.join(cfg['targets'])})")
    artifacts = _pairs(args.onnx, "onnx")
    if "baseline" not in artifacts:
        raise LwparError("--onnx: one artifact must be named baseline (speed-ups are measured against it)")
    for name, path in artifacts.items():
        if not path.is_file():
            raise LwparError(f"{path}: ONNX model not found")
    counts = {}
    for name, path in _pairs(args.torch, "torch").items():
        model, blob = load_model(path)
        counts[name] = {"params": count_params(model), "macs": count_macs(model, blob["model_cfg"]["input_size"])}
    backbones = _pairs(args.backbone, "backbone")
    measured = benchmark({**artifacts, **{f"{n}/backbone": p for n, p in backbones.items()}},
                         cfg["targets"][args.target], cfg)
    results = {name: measured[name] for name in artifacts}
    for name in backbones:  # latency split: the backbone alone, and what the heads add on top
        for row, body in zip(results[name]["latency"], measured[f"{name}/backbone"]["latency"]):
            row["backbone_ms_median"] = body["median_ms"]
            row["heads_ms_median"] = row["median_ms"] - body["median_ms"]
    base = results["baseline"]
    for name, result in results.items():
        source = name.removesuffix("+int8")
        result.update(file=str(artifacts[name]), size_mb=artifacts[name].stat().st_size / 1e6, **counts.get(source, {}))
        for row, base_row in zip(result["latency"], base["latency"]):
            row["speedup"] = base_row["median_ms"] / row["median_ms"]
            row.update(paired_speedup(base_row["round_ms"], row["round_ms"]))
            if "macs" in result and "macs" in counts.get("baseline", {}):
                row["mac_reduction"] = counts["baseline"]["macs"] / result["macs"]
                row["speedup_per_mac_reduction"] = row["speedup"] / row["mac_reduction"]
    write_json(args.out, {"target": args.target, "target_config": cfg["targets"][args.target],
                          "settings": {k: cfg[k] for k in ("batch_sizes", "threads", "warmup", "rounds",
                                                           "iters_per_round")},
                          "machine": machine_info(), "variants": results})
    for name, result in results.items():
        first = result["latency"][0]
        print(f"{name}: batch {first['batch']}, {first['threads']} thread(s): {first['median_ms']:.2f} ms median, "
              f"speed-up {first['speedup']:.2f}x")
