"""Download (or take from the mirror), extract, parse, check and split one dataset.

Output folder: samples.csv (image, person, split, label columns), dataset.json (attributes,
positive rates, split sizes, overlap check, checksums, skipped files) and images/; with --manifest,
also the folder's fingerprint, the file downstream stages depend on.
"""

from __future__ import annotations

from pathlib import Path

from lwpar.stages import flag

FLAGS = [
    flag("--dataset", "dataset name in params datasets", "wildcard:dataset", required=True),
    flag("--out", "prepared dataset folder to write", "output:prepared", type=Path, required=True),
    flag("--manifest", "fingerprint of the prepared folder to write beside it (what pipeline stages read)",
         "output:manifest", type=Path),
    flag("--download-dir", "where downloads go (default: <paths.data>/downloads)", "option", type=Path),
]


def run(args, params) -> None:
    from lwpar.data.prepare import prepare

    download_dir = args.download_dir or Path(params["paths"]["data"]) / "downloads"
    meta = prepare(params, args.dataset, args.out, download_dir, args.manifest)
    sizes = meta["split_sizes"]
    print(f"{args.dataset}: {meta['num_images']} images, {meta['num_persons']} persons, "
          f"{len(meta['attributes'])} attributes; train/val/test {sizes['train']}/{sizes['val']}/{sizes['test']} "
          f"({meta['split_method']}); {meta['seconds']} s -> {args.out}")
