"""Score the deployed ONNX artifact (or a PyTorch model file) on a split; choose thresholds on val.

Scores a model on one split with the PAR metrics: an ONNX model (.onnx, run in ONNX Runtime or, with
--runtime openvino, in OpenVINO: the deployed artifact is what gets scored) or a PyTorch model file (.pt). Writes <out-dir>/metrics.json
(summary) and <out-dir>/per_attribute.csv. With --thresholds-out it also scores the validation split,
chooses each attribute's threshold there (the one maximising its balanced accuracy), writes them,
and scores the split at them too: the literature's figures stay at the one threshold 0.5, the tuned
ones are labelled as such.
"""

from __future__ import annotations

from pathlib import Path

from lwpar.stages import dataset_dir, flag, runtime_flags

FLAGS = [
    dataset_dir(),
    flag("--model", "model.pt or model.onnx", "input:onnx", type=Path, required=True),
    flag("--split", "the split scored", "option", default="test", choices=["train", "val", "test"]),
    flag("--out-dir", "folder for metrics.json and per_attribute.csv", "folder:metrics", type=Path, required=True),
    flag("--input-size", "input size of an ONNX model without lwpar metadata (default: its input shape)",
         type=int, nargs=2, default=None, metavar=("H", "W")),
    *runtime_flags(),
    flag("--thresholds-out", "per-attribute thresholds tuned on the val split (JSON), read by `lwpar predict`",
         "output:thresholds", type=Path),
]


def run(args, params) -> None:
    from lwpar.core.io import write_csv, write_json
    from lwpar.data.loader import Prepared
    from lwpar.deploy.artifact import thresholds_file
    from lwpar.evaluation.evaluate import evaluate

    data = Prepared(args.dataset_dir)
    probabilities, attributes = _scorer(args, data, params)
    result, per_attribute, tuned = evaluate(probabilities, attributes, data, args.split,
                                            params["evaluate"]["threshold"], str(args.model), bool(args.thresholds_out))
    if args.model.suffix == ".onnx":
        from lwpar.core.machine import runtime_version

        result["runtime"] = {"name": args.runtime, "version": runtime_version(args.runtime),
                             **({"inference_precision": args.inference_precision} if args.runtime == "openvino" else {})}
    if tuned is not None:
        write_json(args.thresholds_out, thresholds_file(attributes, tuned, len(data.split("val")[0])))
    write_csv(args.out_dir / "per_attribute.csv", per_attribute)
    write_json(args.out_dir / "metrics.json", result)
    print(f"{args.model} on {args.split}{f' ({args.runtime})' if args.model.suffix == '.onnx' else ''}: mA {result['mA']:.4f}, accuracy {result['accuracy']:.4f}, "
          f"F1 {result['f1']:.4f} ({result['images']} images)"
          + (f"; at thresholds tuned on val: mA {result['tuned_thresholds']['mA']:.4f}" if tuned is not None else ""))


def _scorer(args, data, params):
    """(paths, what) -> probabilities, and the attribute names, for an ONNX artifact or a model file."""
    from lwpar.core.errors import LwparError
    from lwpar.data.loader import build_transform

    model_path, input_size = args.model, args.input_size
    batch, workers = params["evaluate"]["batch_size"], params["runtime"]["workers"]
    if model_path.suffix == ".onnx":
        from lwpar.deploy.artifact import is_artifact, read_metadata
        from lwpar.deploy.runtimes import open_session
        from lwpar.evaluation.scoring import onnx_probabilities

        session = open_session(model_path, params["runtime"]["threads"], args.runtime, args.inference_precision)
        metadata = read_metadata(model_path, session) if is_artifact(session) else {}
        size = input_size or metadata.get("preprocessing", {}).get("input_size") or session.get_inputs()[0].shape[2:]
        if not all(isinstance(s, int) for s in size):
            raise LwparError(f"{model_path}: input size is not fixed in the model; pass --input-size H W")
        transform = build_transform(size, False)
        return (lambda paths, what: onnx_probabilities(session, paths, transform, batch, workers, what),
                metadata.get("attributes", data.attributes))
    from lwpar.compress.structure import load_model
    from lwpar.core.runtime import configure
    from lwpar.evaluation.scoring import torch_probabilities

    device = configure(params)
    model, blob = load_model(model_path)
    transform = build_transform(blob["model_cfg"]["input_size"], False)
    return (lambda paths, what: torch_probabilities(model.to(device), paths, transform, batch, workers, device,
                                                    progress=what), blob["attributes"])
