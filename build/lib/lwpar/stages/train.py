"""Train the baseline model on the prepared dataset, selecting the epoch on validation.

Writes <out>/model.pt (the selected weights), history.csv (one row per epoch) and train.json.
A checkpoint (<out>/checkpoint.pt) is written every epoch; the same command run again after an
interruption resumes from it. A checkpoint from different settings is ignored, not resumed.
"""

from __future__ import annotations

from pathlib import Path

from lwpar.stages import flag, dataset_dir

FLAGS = [
    dataset_dir("lwpar data"),
    flag("--model", "model name in params models", "wildcard:model", required=True),
    flag("--out", "output folder", "folder:model", type=Path, required=True),
]


def run(args, params) -> None:
    import pandas as pd

    from lwpar.core.io import write_csv, write_json
    from lwpar.core.modelfile import save_model
    from lwpar.data.loader import Prepared
    from lwpar.training.baseline import train_baseline

    data = Prepared(args.dataset_dir)
    model, result, summary = train_baseline(params, args.model, data, args.out)
    save_model(args.out / "model.pt", model, params["models"][args.model], data.attributes,
               trained_on=str(args.dataset_dir), lineage=[{"stage": "train", "model": args.model}])
    write_csv(args.out / "history.csv", pd.DataFrame(result.history))
    write_json(args.out / "train.json", summary)
    print(f"{args.model}: best epoch {result.best_epoch}, val {summary['select_metric']} "
          f"{result.best_metric:.4f} -> {args.out / 'model.pt'}")
