"""Prune the start model's channels (torch-pruning) to the variant's MAC or measured latency budget, or zero weights.

Structured channel pruning with torch-pruning (DepGraph; importance L1/L2 magnitude, Taylor or BN
scale; global or per layer; channels rounded to `round_to`) searched to a target fraction of the
start model's MACs (within 2 %) or to a speed-up measured with ONNX Runtime on a profile target
(within 5 %; budget `latency`), or unstructured magnitude pruning made permanent (the reference:
zeros in dense tensors, same MACs). Writes the pruned model (architecture + weights, loadable without
pruning again) and a summary JSON.
"""

from __future__ import annotations

from pathlib import Path

from lwpar.stages import flag, dataset_dir, variant, start_model

FLAGS = [
    start_model(),
    dataset_dir("Taylor importance"),
    variant(),
    flag("--out", "pruned model file to write", "output:model", type=Path, required=True),
    flag("--summary", "summary JSON to write", "output:summary", type=Path, required=True),
    flag("--calibration", "the start model's calibration statistics (reconstruct: true)", "input:calibration", type=Path),
]
TAYLOR_IMAGES = 32  # training images whose gradients rank the channels (importance `taylor`)


def run(args, params) -> None:
    from lwpar.compress import steps
    from lwpar.compress.prune import prune_step
    from lwpar.core.io import write_json
    from lwpar.core.machine import cpu_model
    from lwpar.core.modelfile import lineage, save_model

    begun = steps.start(args.model, params, args.variant, "prune")
    cfg = params["variants"][args.variant]["prune"]
    timer = settings = None
    if cfg["kind"] == "structured" and cfg["budget"] == "latency":
        from lwpar.core.timing import plan_settings
        from lwpar.deploy.benchmark import target_timer

        settings = plan_settings(params["profile"])
        timer = target_timer(params["profile"]["targets"][cfg["target"]], *settings, params["profile"], params["seed"])
    calibration = _taylor_batch(args.dataset_dir, begun.input_size) \
        if cfg["kind"] == "structured" and cfg["importance"] == "taylor" else None
    statistics = None
    if cfg.get("reconstruct"):
        from lwpar.compress.calibration import Statistics
        from lwpar.core.errors import LwparError

        if args.calibration is None:
            raise LwparError(f"variant {args.variant}: reconstruct needs --calibration")
        statistics = Statistics(args.calibration, args.model, params["calibration"]["ridge"])
    done = prune_step(begun, args.variant, cfg, params["seed"], calibration, timer, settings, cpu_model(), statistics)
    save_model(args.out, done.model, begun.blob["model_cfg"], begun.blob["attributes"], structure=done.structure,
               macs=done.macs, params=done.params, lineage=lineage(begun.blob, stage="prune", variant=args.variant, recipe=cfg))
    write_json(args.summary, done.summary)
    macs, weights, summary = done.macs, done.params, done.summary
    measured = f"; measured {summary['speedup_planned']:.2f}x on {cfg['target']} (asked {cfg['speedup']:g}x)" \
        if "speedup_planned" in summary else ""
    print(f"{args.variant}: MACs {macs['before'] / 1e6:.1f} M -> {macs['after'] / 1e6:.1f} M "
          f"({macs['after'] / macs['before']:.3f}); parameters {weights['before'] / 1e6:.2f} M -> "
          f"{weights['after'] / 1e6:.2f} M{measured}")


def _taylor_batch(dataset_dir: Path, size):
    """The training images and labels whose gradients rank channels by Taylor importance."""
    import torch

    from lwpar.data.loader import ImageTable, Prepared, build_transform

    paths, labels = Prepared(dataset_dir).split("train", limit=TAYLOR_IMAGES)
    table = ImageTable(paths, labels, build_transform(size, False))
    return torch.stack([table[i][0] for i in range(len(table))]), torch.from_numpy(labels)
