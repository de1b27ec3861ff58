"""Latency, memory, size and MACs of every artifact of a model on a target, interleaved.

Latency (median, p90, IQR) per batch size and thread count, images per second, peak resident
memory, file size, parameters and MACs (torch.utils.flop_counter), measured speed-up against
`baseline` (the ratio of medians, and the median and quartiles of the per-round ratios) and MAC
reduction, and their ratio (1.0 = the speed-up the MACs promise). Machine, instruction sets, library
versions and thread settings go into the result file. Every artifact runs in a fresh worker process.
"""

from __future__ import annotations

from pathlib import Path

from lwpar.stages import flag

FLAGS = [
    flag("--target", "target name in params profile.targets", "wildcard:target", required=True),
    flag("--out", "result file (JSON)", "output:profile", type=Path, required=True),
    flag("--onnx", "artifacts, each as variant name = ONNX file; one must be `baseline`", "pairs:onnx",
         required=True, nargs="+", metavar="NAME=PATH"),
    flag("--backbone", "backbone-only ONNX files (lwpar export --backbone-out) for the backbone/head split",
         "pairs:backbone", nargs="*", default=[], metavar="NAME=PATH"),
    flag("--torch", "PyTorch model files for parameter and MAC counts (INT8 variants use their source's)",
         "pairs:torch", nargs="*", default=[], metavar="NAME=PATH"),
]


def run(args, params) -> None:
    from lwpar.compress.structure import load_model
    from lwpar.core.io import write_json
    from lwpar.deploy.profile import profile, target_config
    from lwpar.evaluation.complexity import count_macs, count_params
    from lwpar.stages import named_paths

    target_config(params["profile"], args.target)
    counts = {}
    for name, path in named_paths(args.torch, "torch").items():
        model, blob = load_model(path)
        counts[name] = {"params": count_params(model), "macs": count_macs(model, blob["model_cfg"]["input_size"])}
    result = profile(named_paths(args.onnx, "onnx"), named_paths(args.backbone, "backbone"), counts, args.target,
                     params["profile"])
    write_json(args.out, result)
    for name, measured in result["variants"].items():
        first = measured["latency"][0]
        print(f"{name}: batch {first['batch']}, {first['threads']} thread(s): {first['median_ms']:.2f} ms median, "
              f"speed-up {first['speedup']:.2f}x")
