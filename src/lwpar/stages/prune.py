"""Prune a trained model as a variant's recipe says: structured channel pruning with torch-pruning
(DepGraph; importance L1/L2 magnitude, Taylor or BN scale; global or per layer; channels rounded to
`round_to`) searched to a target fraction of the baseline's MACs (within 2 %), or unstructured
magnitude pruning made permanent (the reference: zeros in dense tensors, same MACs).

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
    from lwpar.prune import prune_to_budget, sparsity, unstructured_prune
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

        model, ratio, fraction = prune_to_budget(model, size, cfg["macs_fraction"], cfg, calibration)
        structure = [*earlier, {"op": "prune", "variant": args.variant, "tp_state": tp.state_dict(model)}]
        extra = {"channel_ratio": ratio, "macs_fraction": fraction}
    macs_after, params_after = count_macs(model, size), count_params(model)
    save_model(args.out, model, blob["model_cfg"], blob["attributes"], structure=structure,
               macs={"before": macs_before, "after": macs_after}, params={"before": params_before, "after": params_after},
               lineage=lineage(blob, stage="prune", variant=args.variant, recipe=cfg))
    write_json(args.summary, {"variant": args.variant, "kind": cfg["kind"], "macs_before": macs_before,
                              "macs_after": macs_after, "params_before": params_before, "params_after": params_after,
                              "seconds": round(time.time() - started, 1), **extra})
    print(f"{args.variant}: MACs {macs_before / 1e6:.1f} M -> {macs_after / 1e6:.1f} M "
          f"({macs_after / macs_before:.3f}); parameters {params_before / 1e6:.2f} M -> {params_after / 1e6:.2f} M")
