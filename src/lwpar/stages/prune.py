"""Prune a trained model as a variant's recipe says: structured channel pruning with torch-pruning
(DepGraph; importance L1/L2 magnitude, Taylor or BN scale; global or per layer; channels rounded to
`round_to`) searched to a target fraction of the baseline's MACs (within 2 %) or to a speed-up measured
with ONNX Runtime on a profile target (within 5 %; budget `latency`, `prune.prune_to_speedup`), or
unstructured magnitude pruning made permanent (the reference: zeros in dense tensors, same MACs).

Writes the pruned model (architecture + weights, loadable without pruning again) and a summary JSON.
"""

from __future__ import annotations

from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="trained model.pt")
    parser.add_argument("--dataset-dir", required=True, type=Path,
                        help="prepared dataset (Taylor importance): its folder or its manifest")
    parser.add_argument("--variant", required=True, help="variant name in params variants")
    parser.add_argument("--out", required=True, type=Path, help="pruned model file to write")
    parser.add_argument("--summary", required=True, type=Path, help="summary JSON to write")


def run(args, params) -> None:
    import time

    import torch

    from lwpar import LwparError
    from lwpar.complexity import count_macs, count_params
    from lwpar.data.loader import ImageTable, Prepared, build_transform
    from lwpar.io import write_json
    from lwpar.prune import sparsity, unstructured_prune
    from lwpar.runtime import lineage, save_model
    from lwpar.structure import check_start_model, load_model

    variant = params["variants"].get(args.variant)
    if variant is None or "prune" not in variant:
        raise LwparError(f"--variant {args.variant!r}: not a pruning variant in params variants")
    cfg = variant["prune"]
    model, blob = load_model(args.model)
    earlier = check_start_model(args.model, blob, args.variant, variant["base"])
    size = blob["model_cfg"]["input_size"]
    torch.manual_seed(params["seed"])
    macs_before, params_before = count_macs(model, size), count_params(model)
    started = time.time()
    structure, extra = earlier, {}
    if cfg["kind"] == "unstructured":
        unstructured_prune(model, cfg["amount"])
        extra = {"sparsity": sparsity(model)}
    else:
        calibration = None
        if cfg["importance"] == "taylor":
            data = Prepared(args.dataset_dir)
            paths, labels = data.split("train", limit=32)
            table = ImageTable(paths, labels, build_transform(size, False))
            calibration = (torch.stack([table[i][0] for i in range(len(table))]), torch.from_numpy(labels))
        import torch_pruning as tp

        try:
            model, ratio, extra = _structured(model, size, cfg, params, calibration)
        except LwparError as error:  # the search's own message does not know the variant
            raise LwparError(f"variant {args.variant}: {error}") from None
        structure = [*earlier, {"op": "prune", "variant": args.variant, "tp_state": tp.state_dict(model)}]
    macs_after, params_after = count_macs(model, size), count_params(model)
    save_model(args.out, model, blob["model_cfg"], blob["attributes"], structure=structure,
               macs={"before": macs_before, "after": macs_after}, params={"before": params_before, "after": params_after},
               lineage=lineage(blob, stage="prune", variant=args.variant, recipe=cfg))
    write_json(args.summary, {"variant": args.variant, "kind": cfg["kind"], "macs_before": macs_before,
                              "macs_after": macs_after, "params_before": params_before, "params_after": params_after,
                              "macs_fraction": macs_after / macs_before,
                              "seconds": round(time.time() - started, 1), **extra})
    measured = f"; measured {extra['speedup_planned']:.2f}x on {cfg['target']} (asked {cfg['speedup']:g}x)" \
        if "speedup_planned" in extra else ""
    print(f"{args.variant}: MACs {macs_before / 1e6:.1f} M -> {macs_after / 1e6:.1f} M "
          f"({macs_after / macs_before:.3f}); parameters {params_before / 1e6:.2f} M -> {params_after / 1e6:.2f} M{measured}")


def _structured(model, size, cfg: dict, params: dict, calibration):
    """The pruned model, its channel ratio and the summary's figures, for the recipe's budget."""
    from lwpar.decompose.latency import plan_settings
    from lwpar.profile import machine_info
    from lwpar.prune import prune_to_budget, prune_to_speedup

    if cfg["budget"] == "macs":
        model, ratio, _ = prune_to_budget(model, size, cfg["macs_fraction"], cfg, calibration)
        return model, ratio, {"channel_ratio": ratio}
    batch, threads = plan_settings(params["profile"])
    model, ratio, speedup, trials = prune_to_speedup(
        model, size, cfg["speedup"], cfg, _target_timer(params, cfg["target"], (batch, 3, *size), threads), calibration)
    chosen = next(t for t in trials if t["ratio"] == ratio)
    # plan_* as the decompose stage's rows name them: the report sets them against the profile
    return model, ratio, {"channel_ratio": ratio, "plan_target": cfg["target"], "plan_batch": batch,
                          "plan_threads": threads, "plan_model_ms": chosen["model_ms"],
                          "plan_predicted_ms": chosen["pruned_ms"], "plan_cpu": machine_info().get("cpu_model"),
                          "speedup_requested": cfg["speedup"], "speedup_planned": speedup, "trials": trials}


def _target_timer(params: dict, target: str, input_shape: tuple, threads: int):
    """Times {name: model} as the profile does (its warm-up, rounds and runs per round, interleaved) on
    `target` at `input_shape` and `threads`; returns the median ms per name."""
    from lwpar.decompose.latency import Candidate, time_on_target

    def timer(models: dict) -> dict:
        keys = {Candidate(name, None, None, input_shape): model for name, model in models.items()}
        timed = time_on_target(keys, params["profile"]["targets"][target], input_shape[0], threads, params["profile"],
                               params["seed"])
        return {key.layer: t["median_ms"] for key, t in timed.items()}
    return timer
