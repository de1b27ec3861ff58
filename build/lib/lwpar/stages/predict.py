"""Attribute probabilities for images from an exported artifact (ONNX Runtime or OpenVINO, no torch).

Images, folders of images and videos in (a video's frames, or the person crops a CSV of boxes
gives: columns frame, x, y, w, h and an optional id), one row per image and attribute out (CSV:
image, attribute, probability, positive; or JSON lines, one object per image; a video frame or crop
is labelled `<video>#frame=N[&box=x,y,w,h][&id=...]`). The preprocessing and the attribute names are
read from the artifact (FP32 or INT8). Unreadable images found in a folder are reported and skipped
(and counted at the end); an unreadable image named on the command line is an error. Needs no
params file.
"""

from __future__ import annotations

from pathlib import Path

from lwpar.stages import flag, runtime_flags

NEEDS_PARAMS = False
FLAGS = [
    flag("--model", "artifact folder or its model.onnx", type=Path, required=True),
    flag("inputs", "image files, folders of images or video files", nargs="+", metavar="INPUT"),
    flag("--boxes", "CSV of person boxes in the (one) video: frame, x, y, w, h[, id]; their crops are scored",
         type=Path, default=None),
    flag("--every", "score every n-th frame of a video (without --boxes)", type=int, default=1),
    flag("--out", "output file (default: standard output)", type=Path, default=None),
    flag("--format", "output format (default: from --out's suffix, else csv)", choices=["csv", "jsonl"], default=None),
    flag("--threshold", "one decision threshold for every attribute (default: the artifact's thresholds tuned on "
         "validation, thresholds.json, else 0.5)", type=float, default=None),
    flag("--threads", "runtime threads (0: all cores)", type=int, default=0),
    flag("--batch", "images per runtime call", type=int, default=32),
    *runtime_flags(),
]


def run(args, params) -> None:
    import sys

    from lwpar.core.errors import LwparError
    from lwpar.core.io import write_text
    from lwpar.deploy.predict import Predictor, format_predictions, predict_inputs

    if args.batch < 1 or args.every < 1:
        raise LwparError(f"--batch {args.batch}, --every {args.every}: must be at least 1")
    predictor = Predictor(args.model, threads=args.threads, threshold=args.threshold, batch_size=args.batch,
                          runtime=args.runtime, precision=args.inference_precision)
    rows, skipped = predict_inputs(predictor, args.inputs, args.every, args.boxes, args.batch)
    fmt = args.format or ("jsonl" if args.out and args.out.suffix in (".jsonl", ".json") else "csv")
    text = format_predictions(rows, predictor.attributes, fmt)
    if args.out is None:
        sys.stdout.write(text)
    else:
        write_text(args.out, text)
    print(f"lwpar predict ({args.runtime}): {len(rows)} images, {len(skipped)} skipped (unreadable); thresholds: "
          f"{predictor.threshold_source}" + (f", written to {args.out}" if args.out else ""), file=sys.stderr)
