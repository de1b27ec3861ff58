"""Predict pedestrian attributes with an exported artifact (FP32 or INT8 ONNX), with ONNX Runtime
only: images and folders of images in, one row per image and attribute out (CSV: image, attribute,
probability, positive; or JSON lines, one object per image). The preprocessing and the attribute
names are read from the artifact. Unreadable images found in a folder are reported and skipped
(and counted at the end); an unreadable image named on the command line is an error. Needs no
params file.
"""

from __future__ import annotations

from pathlib import Path

NEEDS_PARAMS = False


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="artifact folder or its model.onnx")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders of images")
    parser.add_argument("--out", type=Path, default=None, help="output file (default: standard output)")
    parser.add_argument("--format", choices=["csv", "jsonl"], default=None,
                        help="output format (default: from --out's suffix, else csv)")
    parser.add_argument("--threshold", type=float, default=0.5, help="decision threshold for every attribute")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: all cores)")
    parser.add_argument("--batch", type=int, default=32, help="images per ONNX Runtime call")


def run(args, params) -> None:
    import csv
    import io
    import json
    import sys

    from tqdm import tqdm

    from lwpar import LwparError
    from lwpar.io import write_text
    from lwpar.predict import Predictor, expand_inputs

    if args.batch < 1:
        raise LwparError(f"--batch {args.batch}: must be at least 1")
    predictor = Predictor(args.model, threads=args.threads, threshold=args.threshold, batch_size=args.batch)
    items = expand_inputs(args.inputs)
    fmt = args.format or ("jsonl" if args.out and args.out.suffix in (".jsonl", ".json") else "csv")
    rows, skipped = [], []
    bar = tqdm(total=len(items), desc="predict", unit="image", disable=None, file=sys.stderr)
    for start in range(0, len(items), args.batch):
        arrays, names = [], []
        for path, named in items[start:start + args.batch]:
            try:
                arrays.append(predictor.prepare(path))
                names.append(path)
            except LwparError as exc:
                if named:
                    raise
                skipped.append(path)
                print(f"lwpar predict: skipped {exc}", file=sys.stderr)
        if arrays:
            import numpy as np

            result = predictor.predict_arrays(np.stack(arrays))
            rows += list(zip(names, result.probabilities, result.decisions))
        bar.update(len(items[start:start + args.batch]))
    bar.close()

    text = io.StringIO()
    if fmt == "csv":
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["image", "attribute", "probability", "positive"])
        for path, probs, decisions in rows:
            writer.writerows([str(path), a, f"{p:.8g}", int(d)] for a, p, d in zip(predictor.attributes, probs, decisions))
    else:
        for path, probs, decisions in rows:
            text.write(json.dumps({"image": str(path), "attributes": {
                a: {"probability": float(p), "positive": bool(d)} for a, p, d in zip(predictor.attributes, probs, decisions)}})
                + "\n")
    if args.out is None:
        sys.stdout.write(text.getvalue())
    else:
        write_text(args.out, text.getvalue())
    print(f"lwpar predict: {len(rows)} images, {len(skipped)} skipped (unreadable)"
          + (f", written to {args.out}" if args.out else ""), file=sys.stderr)
