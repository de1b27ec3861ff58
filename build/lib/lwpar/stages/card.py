"""An artifact's model card from its metadata, evaluation, profiles and the baseline's records.

Writes card.json and card.md beside the artifact's model.onnx: the artifact's metadata (attributes,
preprocessing, how it was made), its test scores at 0.5 and at the thresholds tuned on validation,
calibration, MACs, parameters, size, measured latency on each profiled target, the baseline's
weight provenance and the FP32 export's parity.
"""

from __future__ import annotations

from pathlib import Path

from lwpar.stages import flag, dataset_dir

FLAGS = [
    flag("--name", "the artifact's name in the profiles (baseline, a variant, <x>+int8)", "wildcard:name",
         required=True),
    flag("--model", "the artifact's model.onnx", "input:onnx", type=Path, required=True),
    flag("--metrics", "its evaluation (metrics.json)", "input:metrics", type=Path, required=True),
    flag("--thresholds", "its tuned thresholds (thresholds.json)", "input:thresholds", type=Path, required=True),
    flag("--parity", "parity.json of its FP32 export", "input:parity", type=Path),
    flag("--training", "the baseline's train.json", "input:training", type=Path, required=True),
    dataset_dir(),
    flag("--out", "card.json to write (card.md beside it)", "output:json", type=Path, required=True),
    flag("--profiles", "profile JSON of each target", "inputs:profiles", type=Path, nargs="*", default=[]),
]


def run(args, params) -> None:
    from lwpar.core.io import write_json, write_text
    from lwpar.data.loader import Prepared
    from lwpar.deploy import card

    built = card.from_files(args.name, args.model, args.metrics, args.thresholds, args.parity, args.training,
                            Prepared(args.dataset_dir).meta, args.profiles)
    write_json(args.out, built)
    write_text(args.out.with_suffix(".md"), card.markdown(built))
    print(f"{args.out}: card of {args.name}")
