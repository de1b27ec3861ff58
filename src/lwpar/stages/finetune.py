"""Fine-tune a compressed model with the training loop of `train` (same resume and determinism
guarantees), optionally after recalibrating BatchNorm statistics and with knowledge distillation
from the uncompressed baseline; the epoch is selected on validation.

Writes <out>/model.pt, history.csv and finetune.json (validation metrics before and after).
"""

from __future__ import annotations

from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="compressed model file")
    parser.add_argument("--teacher", type=Path, default=None, help="baseline model.pt (for distillation)")
    parser.add_argument("--dataset-dir", required=True, type=Path,
                        help="prepared dataset: its folder or its manifest")
    parser.add_argument("--variant", required=True, help="variant name in params variants")
    parser.add_argument("--out", required=True, type=Path, help="output folder")


def run(args, params) -> None:
    import time

    import torch

    from lwpar import LwparError
    from lwpar.data.loader import Prepared, build_transform, make_loader
    from lwpar.evaluation import predict_torch
    from lwpar.io import write_json
    from lwpar.metrics import pedestrian_metrics, summary
    from lwpar.runtime import configure, lineage, load_torch, run_precision, save_model, seed_everything
    from lwpar.structure import load_model
    from lwpar.stages.train import fingerprint
    from lwpar.train import CHECKPOINT, fit, recalibrate_batchnorm, write_history

    if args.variant not in params["variants"]:
        raise LwparError(f"--variant {args.variant!r}: not in params variants ({', '.join(params['variants'])})")
    recipe = params["variants"][args.variant]["finetune"]
    device = configure(params)
    data = Prepared(args.dataset_dir)
    model, blob = load_model(args.model)
    size = blob["model_cfg"]["input_size"]
    cfg = {**params["train"], "epochs": recipe["epochs"], "lr": recipe["lr"], "warmup_epochs": 0,
           "max_steps_per_epoch": recipe["max_steps_per_epoch"] or params["train"]["max_steps_per_epoch"]}
    workers, batch, threshold = params["runtime"]["workers"], params["evaluate"]["batch_size"], params["evaluate"]["threshold"]
    seed_everything(params["seed"])
    val_paths, val_labels = data.split("val")
    plain = build_transform(size, False)

    model.to(device)
    precision = run_precision(model, params["runtime"]["amp"], size, device)

    def validate(m):
        probs = predict_torch(m, val_paths, plain, batch, workers, device, precision)
        return summary(pedestrian_metrics(val_labels, probs, threshold))

    before = validate(model) if recipe["score_before_recalibration"] or not recipe["recalibrate_bn"] else None
    if recipe["recalibrate_bn"]:
        train_paths, train_labels = data.split("train")
        loader = make_loader(train_paths, train_labels, plain, cfg["batch_size"], workers, shuffle=True, seed=params["seed"])
        recalibrate_batchnorm(model, loader, device, max_batches=50, precision=precision)
    recalibrated = validate(model) if recipe["recalibrate_bn"] else None
    teacher = None
    if recipe["distill_weight"] > 0:
        if args.teacher is None:
            raise LwparError(f"variant {args.variant}: distill_weight > 0 needs --teacher")
        teacher, _ = load_model(args.teacher)
        teacher.to(device).eval()
    structure = [{k: v for k, v in step.items() if k != "tp_state"} for step in blob.get("structure", [])]
    stamp = fingerprint(recipe, params["train"], params["seed"], structure, data.meta.get("sources"),
                        *([str(precision)] if precision != torch.float32 else []))
    checkpoint = args.out / CHECKPOINT
    if checkpoint.exists() and load_torch(checkpoint, "training checkpoint").get("fingerprint", stamp) != stamp:
        checkpoint.unlink()
    started = time.time()
    history, best_epoch = [], 0
    if recipe["epochs"] > 0:
        start_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        distill = {"weight": recipe["distill_weight"], "temperature": recipe["distill_temperature"]}
        result = fit(model, data, size, cfg, args.out, device, params["seed"], workers, precision,
                     batch, threshold, teacher=teacher, distill=distill, fingerprint=stamp)
        history, best_epoch = result.history, result.best_epoch
        start_score = (recalibrated or before)[cfg["select_metric"]]
        if result.best_metric >= start_score:
            model.load_state_dict(result.state_dict)
        else:  # fine-tuning never beat the starting point on validation: keep the starting point
            model.load_state_dict(start_state)
            best_epoch = 0
    # the kept weights were scored on validation already, in the same precision: no further pass
    after = ({k.removeprefix("val_"): v for k, v in history[best_epoch - 1].items() if k.startswith("val_")}
             if best_epoch else recalibrated or before)
    extra = {k: blob[k] for k in ("structure", "macs", "params") if k in blob}
    save_model(args.out / "model.pt", model, blob["model_cfg"], blob["attributes"], **extra,
               lineage=lineage(blob, stage="finetune", variant=args.variant, recipe=recipe, best_epoch=best_epoch))
    write_history(history, args.out / "history.csv")
    write_json(args.out / "finetune.json", {
        "variant": args.variant, "val_before": before, "val_after_bn_recalibration": recalibrated,
        "val_after": after, "best_epoch": best_epoch, "epochs": recipe["epochs"],
        "seconds": round(time.time() - started, 1), "device": str(device),
        "precision": str(precision).removeprefix("torch.")})
    print(f"{args.variant}: val mA"
          + (f" {before['mA']:.4f} before fine-tuning," if before else "")
          + (f" {recalibrated['mA']:.4f} after BN recalibration," if recalibrated else "")
          + f" {after['mA']:.4f} after -> {args.out / 'model.pt'}")
