"""Measure the calibration statistics of a start model's layers (decompositions fitting outputs, prunings refitting).

For the layers the variants starting from this model with `fit: covariance`/`sequential` or
`prune.reconstruct` may factorize or refit (`--select`, one word per distinct selection, so the job
does not depend on which variants the experiment lists): per layer, the second moment of its unfolded input over `calibration.images` seeded training images, and over
`calibration.heldout_images` others (which score each factorization's output error). Never
validation or test images. Writes calibration.pt with what it was measured on (the model's sha256)
and what it cost (seconds, bytes); the decompose stage refuses statistics of another model.
"""

from __future__ import annotations

from pathlib import Path

from lwpar.stages import dataset_dir, flag

FLAGS = [
    flag("--model", "the start model.pt (the baseline, or the base variant's fine-tuned model)", "input:model",
         type=Path, required=True),
    dataset_dir("training images"),
    flag("--select", "the layers to measure: `prune`, or decomposed kinds joined by `+` (kxk, pointwise, linear) "
         "with `first`, `heads` or `heads-only`, e.g. kxk+pointwise", "option", nargs="+", required=True),
    flag("--out", "calibration statistics (calibration.pt) to write", "output:statistics", type=Path, required=True),
]


def run(args, params) -> None:
    from lwpar.compress import calibration
    from lwpar.compress.structure import load_model
    from lwpar.core.runtime import configure
    from lwpar.data.loader import Prepared

    cfg = params["calibration"]
    device = configure(params)
    model, blob = load_model(args.model)
    names = calibration.layers_to_calibrate(model, args.select, blob.get("structure", []))
    data = Prepared(args.dataset_dir)
    fit_paths, heldout_paths = calibration.calibration_images(data, cfg["images"], cfg["heldout_images"], params["seed"])
    size, workers = blob["model_cfg"]["input_size"], params["runtime"]["workers"]
    statistics = calibration.calibrate(
        model, args.model, names, calibration.image_batches(fit_paths, size, cfg["batch_size"], workers),
        calibration.image_batches(heldout_paths, size, cfg["batch_size"], workers), device,
        (len(fit_paths), len(heldout_paths)), cfg["batch_size"])
    calibration.save(args.out, statistics)
    print(f"{args.out}: {len(names)} layers from {len(fit_paths)} + {len(heldout_paths)} training images in "
          f"{statistics['seconds']:.0f} s, {statistics['bytes'] / 1e6:.1f} MB")
