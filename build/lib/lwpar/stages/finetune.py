"""Fine-tune a compressed variant, or a control's start model (BN recalibration, optional distillation).

With `blockwise.steps`, first trains the compressed model's changed blocks towards the baseline's
(`--teacher`) on cached training images. Then runs the training loop of `train` (same resume and
determinism guarantees) after re-estimating BatchNorm statistics, optionally distilled from the
uncompressed baseline; the epoch is selected on validation. With `finetune.qat`, trains on the INT8
grids of `quantize` (calibrated on its images). Writes <out>/model.pt, history.csv and
finetune.json (validation metrics before and after, the block-wise record and its seconds).
"""

from __future__ import annotations

from pathlib import Path

from lwpar.stages import flag, dataset_dir, variant

FLAGS = [
    flag("--model", "compressed model file (a control: its start model)", "input:model", type=Path, required=True),
    flag("--teacher", "baseline model.pt (for distillation)", "input:teacher", type=Path),
    dataset_dir(),
    variant(),
    flag("--out", "output folder", "folder:model", type=Path, required=True),
]


def run(args, params) -> None:
    import pandas as pd
    import torch

    from lwpar.compress.blockwise import reconstruct_blocks
    from lwpar.compress.calibration import fitting_images
    from lwpar.compress.recipes import QAT_KEYS
    from lwpar.compress.structure import load_model
    from lwpar.core.errors import LwparError
    from lwpar.core.io import write_csv, write_json
    from lwpar.core.modelfile import lineage, save_model
    from lwpar.core.runtime import configure, run_precision, seed_everything
    from lwpar.data.loader import Prepared, build_transform, calibration_batches
    from lwpar.training.checkpoint import fingerprint
    from lwpar.training.finetune import finetune
    from lwpar.training.loop import Run

    if args.variant not in params["variants"]:
        raise LwparError(f"--variant {args.variant!r}: not in params variants ({', '.join(params['variants'])})")
    recipe = params["variants"][args.variant]["finetune"]
    blockwise = params["variants"][args.variant]["blockwise"]
    device = configure(params)
    data = Prepared(args.dataset_dir)
    model, blob = load_model(args.model)
    size = blob["model_cfg"]["input_size"]
    seed_everything(params["seed"])
    model.to(device)
    precision = run_precision(model, params["runtime"]["amp"], size, device)
    teacher = reconstruct = None
    if recipe["distill_weight"] > 0 or blockwise["steps"]:
        if args.teacher is None:
            raise LwparError(f"variant {args.variant}: distillation and block-wise reconstruction need --teacher")
        teacher, _ = load_model(args.teacher)
        teacher.to(device).eval()
    if blockwise["steps"]:
        def reconstruct(student):
            images, heldout = fitting_images(data, params, size, blockwise["images"], blockwise["heldout_images"])
            return reconstruct_blocks(student, teacher, images, heldout, blockwise, device, params["seed"],
                                      params["calibration"]["batch_size"])
    structure = [{k: v for k, v in step.items() if k != "tp_state"} for step in blob.get("structure", [])]
    stamp = fingerprint(recipe, params["train"], params["seed"], structure, data.meta.get("sources"),
                        *([str(precision)] if precision != torch.float32 else []),
                        *([blockwise] if blockwise["steps"] else []),
                        *([{k: params["quantize"][k] for k in QAT_KEYS}] if recipe["qat"] else []))
    run_on = Run(device, precision, params["runtime"]["workers"], params["seed"], params["evaluate"]["batch_size"],
                 params["evaluate"]["threshold"])
    qat = None
    if recipe["qat"]:
        quantize = params["quantize"]
        qat = {"per_channel": quantize["per_channel"], "seven_bit": quantize["reduce_range"] is True,
               "activations": quantize["activations"],
               "batches": calibration_batches(data.split("train")[0], build_transform(size, False),
                                              quantize["calibration_images"], params["seed"])}
    history, scores = finetune(model, data, size, recipe, params["train"], args.out, run_on, teacher, stamp,
                               reconstruct, qat)
    extra = {k: blob[k] for k in ("structure", "macs", "params") if k in blob}
    save_model(args.out / "model.pt", model, blob["model_cfg"], blob["attributes"], **extra,
               lineage=lineage(blob, stage="finetune", variant=args.variant, recipe=recipe, best_epoch=scores["best_epoch"]))
    write_csv(args.out / "history.csv", pd.DataFrame(history))
    write_json(args.out / "finetune.json", {"variant": args.variant, **scores})
    if "blockwise" in scores:
        blocks = [b for b in scores["blockwise"]["blocks"] if "skipped" not in b]
        skipped = len(scores["blockwise"]["blocks"]) - len(blocks)
        print(f"{args.variant}: {len(blocks)} blocks reconstructed in {scores['blockwise']['seconds']:.0f} s; held-out "
              f"relative error {sum(b['heldout_error_before'] for b in blocks) / max(len(blocks), 1):.4f} -> "
              f"{sum(b['heldout_error_after'] if b['kept'] else b['heldout_error_before'] for b in blocks) / max(len(blocks), 1):.4f} "
              f"(mean over blocks)" + (f"; {skipped} skipped (output shape changed)" if skipped else ""))
    before, recalibrated, after = scores["val_before"], scores["val_after_bn_recalibration"], scores["val_after"]
    print(f"{args.variant}: val mA"
          + (f" {before['mA']:.4f} before fine-tuning," if before else "")
          + (f" {recalibrated['mA']:.4f} after BN recalibration," if recalibrated else "")
          + f" {after['mA']:.4f} after -> {args.out / 'model.pt'}")
