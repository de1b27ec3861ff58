"""Write an artifact's model card (card.json and card.md beside its model.onnx) from the pipeline's
records: the artifact's metadata (attributes, preprocessing, how it was made), its test scores at
0.5 and at the thresholds tuned on validation, calibration, MACs, parameters, size, measured latency
on each profiled target, the baseline's weight provenance and the FP32 export's parity.
"""

from __future__ import annotations

from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("--name", required=True, help="the artifact's name in the profiles (baseline, a variant, <x>+int8)")
    parser.add_argument("--model", required=True, type=Path, help="the artifact's model.onnx")
    parser.add_argument("--metrics", required=True, type=Path, help="its evaluation (metrics.json)")
    parser.add_argument("--thresholds", required=True, type=Path, help="its tuned thresholds (thresholds.json)")
    parser.add_argument("--parity", type=Path, default=None, help="parity.json of its FP32 export")
    parser.add_argument("--training", required=True, type=Path, help="the baseline's train.json")
    parser.add_argument("--dataset-dir", required=True, type=Path, help="prepared dataset: its folder or its manifest")
    parser.add_argument("--profiles", type=Path, nargs="*", default=[], help="profile JSON of each target")
    parser.add_argument("--out", required=True, type=Path, help="card.json to write (card.md beside it)")


def run(args, params) -> None:
    import json

    from lwpar import LwparError, card
    from lwpar.artifact import read_metadata
    from lwpar.data.loader import Prepared
    from lwpar.io import write_json, write_text

    def load(path):
        try:
            return json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise LwparError(f"{path}: unreadable ({exc})") from None

    profiles = [load(p) for p in args.profiles]
    missing = [str(p) for p, profile in zip(args.profiles, profiles) if args.name not in profile.get("variants", {})]
    if missing:
        raise LwparError(f"{', '.join(missing)}: no measurement of artifact {args.name!r}")
    built = card.build(args.name, args.model, read_metadata(args.model), load(args.metrics), load(args.thresholds),
                       load(args.parity) if args.parity else None, load(args.training),
                       Prepared(args.dataset_dir).meta, profiles)
    write_json(args.out, built)
    write_text(args.out.with_suffix(".md"), card.markdown(built))
    print(f"{args.out}: card of {args.name}")
