"""Measure the calibration statistics of a start model's layers (decompositions fitting outputs, prunings refitting).

For the variants that start from this model with `fit: covariance` or `prune.reconstruct`: per layer
they may factorize or refit, the second moment of its unfolded input over `calibration.images` seeded training images, and over
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
    flag("--variants", "the variants (params variants) whose selected layers are measured", "option", nargs="+",
         required=True),
    flag("--out", "calibration statistics (calibration.pt) to write", "output:statistics", type=Path, required=True),
]


def run(args, params) -> None:
    from lwpar.compress import calibration
    from lwpar.compress.recipes import is_calibrated
    from lwpar.compress.structure import load_model
    from lwpar.core.errors import LwparError
    from lwpar.core.runtime import configure
    from lwpar.data.loader import Prepared

    recipes = []
    for name in args.variants:
        recipe = params["variants"].get(name)
        if recipe is None or not is_calibrated(recipe):
            raise LwparError(f"--variants {name!r}: not a variant of params variants that fits outputs or reconstructs")
        recipes.append(recipe)
    cfg = params["calibration"]
    device = configure(params)
    model, blob = load_model(args.model)
    names = calibration.layers_to_calibrate(model, recipes, blob.get("structure", []))
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
