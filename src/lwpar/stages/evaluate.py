"""Score a model on one split with the PAR metrics: a PyTorch model file (.pt) or an ONNX model
(.onnx, run in ONNX Runtime: the deployed artifact is what gets scored).

Writes <out-dir>/metrics.json (summary) and <out-dir>/per_attribute.csv. With --thresholds-out it
also scores the validation split, chooses each attribute's threshold there (the one maximising its
balanced accuracy), writes them, and scores the test split at them too: the literature's figures stay
at the one threshold 0.5, the tuned ones are labelled as such.
"""

from __future__ import annotations

from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("--dataset-dir", required=True, type=Path,
                        help="prepared dataset: its folder or its manifest")
    parser.add_argument("--model", required=True, type=Path, help="model.pt or model.onnx")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--out-dir", required=True, type=Path, help="folder for metrics.json and per_attribute.csv")
    parser.add_argument("--input-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="input size of an ONNX model without lwpar metadata (default: its input shape)")
    parser.add_argument("--thresholds-out", type=Path, default=None,
                        help="per-attribute thresholds tuned on the val split (JSON), read by `lwpar predict`")


def run(args, params) -> None:
    from lwpar import LwparError
    from lwpar.data.loader import Prepared, build_transform
    from lwpar.artifact import is_artifact, onnx_session, read_metadata, thresholds_file
    from lwpar.evaluation import predict_onnx, predict_torch
    from lwpar.io import write_csv, write_json
    from lwpar.metrics import balanced_thresholds, calibration, pedestrian_metrics, per_attribute_table, summary
    from lwpar.runtime import configure
    from lwpar.structure import load_model

    data = Prepared(args.dataset_dir)
    paths, labels = data.split(args.split)
    if not paths:
        raise LwparError(f"{args.dataset_dir}: split {args.split!r} is empty")
    batch, workers = params["evaluate"]["batch_size"], params["runtime"]["workers"]
    if args.model.suffix == ".onnx":
        session = onnx_session(args.model, params["runtime"]["threads"])
        metadata = read_metadata(args.model, session) if is_artifact(session) else {}
        size = args.input_size or metadata.get("preprocessing", {}).get("input_size") or session.get_inputs()[0].shape[2:]
        if not all(isinstance(s, int) for s in size):
            raise LwparError(f"{args.model}: input size is not fixed in the model; pass --input-size H W")
        attributes = metadata.get("attributes", data.attributes)

        def predict(split_paths):
            return predict_onnx(session, split_paths, build_transform(size, False), batch, workers)
    else:
        device = configure(params)
        model, blob = load_model(args.model)
        attributes = blob["attributes"]
        model.to(device)

        def predict(split_paths):
            return predict_torch(model, split_paths, build_transform(blob["model_cfg"]["input_size"], False),
                                 batch, workers, device)
    probs = predict(paths)
    if attributes != data.attributes or probs.shape[1] != len(data.attributes):
        raise LwparError(f"{args.model}: predicts {probs.shape[1]} attributes, {args.dataset_dir} has "
                         f"{len(data.attributes)} (trained on another dataset?)")
    metrics = pedestrian_metrics(labels, probs, params["evaluate"]["threshold"])
    result = {"model": str(args.model), "dataset": data.meta["dataset"], "split": args.split,
              "images": len(paths), **summary(metrics), "calibration": calibration(labels, probs)}
    if args.thresholds_out:
        val_paths, val_labels = data.split("val")
        if not val_paths:
            raise LwparError(f"{args.dataset_dir}: split 'val' is empty: no images to choose thresholds on")
        tuned = balanced_thresholds(val_labels, predict(val_paths), params["evaluate"]["threshold"])
        write_json(args.thresholds_out, thresholds_file(attributes, tuned, len(val_paths)))
        result["tuned_thresholds"] = {"chosen_on": "val", **summary(pedestrian_metrics(labels, probs, tuned))}
    write_csv(args.out_dir / "per_attribute.csv", per_attribute_table(metrics, data.attributes))
    write_json(args.out_dir / "metrics.json", result)
    print(f"{args.model} on {args.split}: mA {result['mA']:.4f}, accuracy {result['accuracy']:.4f}, "
          f"F1 {result['f1']:.4f} ({len(paths)} images)"
          + (f"; at thresholds tuned on val: mA {result['tuned_thresholds']['mA']:.4f}" if args.thresholds_out else ""))
