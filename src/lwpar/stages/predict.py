"""Predict pedestrian attributes with an exported artifact (FP32 or INT8 ONNX), with ONNX Runtime
only: images, folders of images and videos in (a video's frames, or the person crops a CSV of boxes
gives: columns frame, x, y, w, h and an optional id), one row per image and attribute out (CSV:
image, attribute, probability, positive; or JSON lines, one object per image; a video frame or crop
is labelled `<video>#frame=N[&box=x,y,w,h][&id=...]`). The preprocessing and the attribute
names are read from the artifact. Unreadable images found in a folder are reported and skipped
(and counted at the end); an unreadable image named on the command line is an error. Needs no
params file.
"""

from __future__ import annotations

from pathlib import Path

NEEDS_PARAMS = False


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="artifact folder or its model.onnx")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders of images or video files")
    parser.add_argument("--boxes", type=Path, default=None,
                        help="CSV of person boxes in the (one) video: frame, x, y, w, h[, id]; their crops are scored")
    parser.add_argument("--every", type=int, default=1, help="score every n-th frame of a video (without --boxes)")
    parser.add_argument("--out", type=Path, default=None, help="output file (default: standard output)")
    parser.add_argument("--format", choices=["csv", "jsonl"], default=None,
                        help="output format (default: from --out's suffix, else csv)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="one decision threshold for every attribute (default: the artifact's thresholds tuned "
                             "on validation, thresholds.json, else 0.5)")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: all cores)")
    parser.add_argument("--batch", type=int, default=32, help="images per ONNX Runtime call")


def run(args, params) -> None:
    import csv
    import io
    import json
    import sys

    import numpy as np
    from tqdm import tqdm

    from lwpar import LwparError
    from lwpar.io import write_text
    from lwpar.predict import Predictor, count_inputs, expand_inputs, read_inputs

    if args.batch < 1 or args.every < 1:
        raise LwparError(f"--batch {args.batch}, --every {args.every}: must be at least 1")
    predictor = Predictor(args.model, threads=args.threads, threshold=args.threshold, batch_size=args.batch)
    items = expand_inputs(args.inputs)
    fmt = args.format or ("jsonl" if args.out and args.out.suffix in (".jsonl", ".json") else "csv")
    rows, skipped, batch = [], [], []
    bar = tqdm(total=count_inputs(items, args.every, args.boxes), desc="predict", unit="image", disable=None,
               file=sys.stderr)

    def flush():
        if batch:
            result = predictor.predict_arrays(np.stack([array for _, array in batch]))
            rows.extend(zip([label for label, _ in batch], result.probabilities, result.decisions))
            batch.clear()

    for label, named, load in read_inputs(items, args.every, args.boxes):
        try:
            batch.append((label, predictor.prepare(load())))
        except LwparError as exc:
            if named:
                raise
            skipped.append(label)
            print(f"lwpar predict: skipped {exc}", file=sys.stderr)
        if len(batch) == args.batch:
            flush()
        bar.update()
    flush()
    bar.close()

    text = io.StringIO()
    if fmt == "csv":
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["image", "attribute", "probability", "positive"])
        for path, probs, decisions in rows:
            writer.writerows([path, a, f"{p:.8g}", int(d)] for a, p, d in zip(predictor.attributes, probs, decisions))
    else:
        for path, probs, decisions in rows:
            text.write(json.dumps({"image": path, "attributes": {
                a: {"probability": float(p), "positive": bool(d)} for a, p, d in zip(predictor.attributes, probs, decisions)}})
                + "\n")
    if args.out is None:
        sys.stdout.write(text.getvalue())
    else:
        write_text(args.out, text.getvalue())
    print(f"lwpar predict: {len(rows)} images, {len(skipped)} skipped (unreadable); thresholds: "
          f"{predictor.threshold_source}"
          + (f", written to {args.out}" if args.out else ""), file=sys.stderr)
