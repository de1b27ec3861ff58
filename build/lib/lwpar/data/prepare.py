"""Stage `data`: fetch, extract safely, parse, check every image, split, write the canonical form.

Canonical prepared form, the same for every dataset, in one folder:
  samples.csv   image (path relative to the folder), person, split, then every label column
  dataset.json  dataset, evaluated attributes in order, positive rates on train, split sizes,
                overlap check, source checksums, skipped images
  images/       the images

Beside the folder, a small manifest (`<folder>.manifest.json`) fingerprints it: hashes of the table,
the sidecar and every image the table names. Downstream stages depend on the manifest, not on the
folder, so a no-op `dvc status` hashes the 19,000-image tree once (the data stage's output), not once
per stage that reads it; the loader checks that the manifest still describes the folder.
"""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from lwpar.core.errors import LwparError
from lwpar.core.progress import Progress
from lwpar.config import mirror_dir
from lwpar.data import archive, download, parsers, peta
from lwpar.data.labels_csv import check_attributes_trainable
from lwpar.core.io import atomic_dir, sha256_file, write_csv, write_json

SPLITS = ("train", "val", "test")
IMAGES = "images"


def prepare(params: dict, name: str, out_dir: Path, download_dir: Path, manifest: Path | None = None) -> dict:
    if name not in params["datasets"]:
        raise LwparError(f"--dataset {name!r}: not in params datasets ({', '.join(params['datasets'])})")
    cfg = params["datasets"][name]
    started = time.time()
    mirror = mirror_dir(params)
    source, source_sha = download.fetch(cfg["archive"], cfg["url"], cfg["sha256"], mirror, download_dir)
    sources = {cfg["archive"]: source_sha}
    annotation = None
    if cfg["annotation"]:
        annotation, sources[cfg["annotation"]] = download.fetch(
            cfg["annotation"], None, cfg["annotation_sha256"], mirror, download_dir)
    with atomic_dir(out_dir) as tmp:
        images_root = tmp / IMAGES
        listing = None
        if source.is_dir():
            images_root.symlink_to(source.resolve(), target_is_directory=True)
        elif cfg["max_persons"]:
            # A subset run extracts the label files, picks its persons from the archive's listing,
            # then extracts only their images (150 persons of PETA's 8,699: 1 % of the archive).
            members = archive.list_members(source)
            listing = [m for m in members if Path(m).suffix.lower() in peta.IMAGE_SUFFIXES]
            archive.extract_zip(source, images_root, set(members) - set(listing))
        else:
            archive.extract_zip(source, images_root)
        record = parsers.parse(cfg["kind"], images_root, annotation, shown=source.name, listing=listing,
                               options=cfg["csv"])
        split, keep = _select(record, cfg, params["seed"])
        if listing is not None:
            archive.extract_zip(source, images_root, set(np.asarray(record["images"], dtype=object)[keep]))
        table, meta = _canonical(record, split, keep, cfg, images_root, source.name)
        if cfg["kind"] == "csv":
            check_attributes_trainable(table, record["evaluated"], f"{cfg['annotation']} (datasets.{name})")
        # the seed of every seeded choice: the identity-disjoint split, a carved validation part, a subset
        meta.update(dataset=name, kind=cfg["kind"], sources=sources, seed=params["seed"],
                    seconds=round(time.time() - started, 1))
        write_csv(tmp / "samples.csv", table)
        write_json(tmp / "dataset.json", meta)
    if manifest is not None:
        write_json(manifest, dataset_manifest(out_dir, manifest))
    return meta


def dataset_manifest(folder: Path, manifest: Path) -> dict:
    """The prepared folder's fingerprint: table and sidecar hashes, and one hash over every image."""
    folder = Path(folder)
    table = pd.read_csv(folder / "samples.csv", usecols=["image"])
    digest = hashlib.sha256()
    size = 0
    for rel in table.image:
        data = (folder / rel).read_bytes()
        size += len(data)
        digest.update(f"{rel}\0{hashlib.sha256(data).hexdigest()}\n".encode())
    return {
        "folder": os.path.relpath(folder.resolve(), Path(manifest).resolve().parent),
        "samples_sha256": sha256_file(folder / "samples.csv"),
        "dataset_sha256": sha256_file(folder / "dataset.json"),
        "images": int(len(table)), "images_bytes": size, "images_sha256": digest.hexdigest(),
    }


def _select(record: dict, cfg: dict, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Each image's split, and which images the prepared dataset keeps (`max_persons`)."""
    persons = np.asarray(record["persons"], dtype=object)
    if cfg["split"] == "standard":
        split = _standard_split(record, cfg["partition"], len(persons))
        split = carve_validation(split, persons, cfg["fractions"], seed)
    else:
        split = identity_disjoint_split(persons, cfg["fractions"], seed)
    keep = split != ""
    if cfg["max_persons"]:
        keep &= np.isin(persons, _pick_persons(persons[keep], cfg["max_persons"], seed))
    return split, keep


def _canonical(record: dict, split: np.ndarray, keep: np.ndarray, cfg: dict, images_root: Path,
               source_name: str) -> tuple[pd.DataFrame, dict]:
    images = np.asarray(record["images"], dtype=object)
    persons = np.asarray(record["persons"], dtype=object)
    labels = record["labels"]
    skipped = []
    bad = check_images(images_root, images[keep])
    missing = list(record.get("missing", []))
    if bad or missing:
        culprits = [f"{source_name}: {p}: {why}" for p, why in bad] + [f"{m}: no image file" for m in missing]
        if not cfg["skip_bad_images"]:
            shown = "; ".join(culprits[:5]) + (f"; and {len(culprits) - 5} more" if len(culprits) > 5 else "")
            raise LwparError(f"{len(culprits)} bad or missing images (set skip_bad_images to skip them): {shown}")
        skipped = culprits
        keep &= ~np.isin(images, [p for p, _ in bad])
    images, persons, labels, split = images[keep], persons[keep], labels[keep], split[keep]
    table = pd.DataFrame({"image": [f"{IMAGES}/{p}" for p in images], "person": persons, "split": split})
    table = pd.concat([table, pd.DataFrame(labels, columns=record["attributes"])], axis=1)
    evaluated = record["evaluated"]
    train = table[table.split == "train"]
    meta = {
        "attributes": evaluated,
        "all_label_columns": record["attributes"],
        "num_images": int(len(table)),
        "num_persons": int(table.person.nunique()),
        "split_method": _split_method(cfg),
        "split_sizes": {s: int((split == s).sum()) for s in SPLITS},
        "split_persons": {s: int(table.person[table.split == s].nunique()) for s in SPLITS},
        "identity_overlap": _overlap(table),
        "positive_rate_train": {a: float(train[a].mean()) if len(train) else 0.0 for a in evaluated},
        "skipped": skipped,
        "label_entries_without_images": list(record.get("orphans", [])),
    }
    return table, meta


def _split_method(cfg: dict) -> str:
    if cfg["kind"] == "csv":
        if cfg["split"] == "standard":
            return f"the labels' column {cfg['csv']['split_column']!r}"
        return f"identity_disjoint by {repr(cfg['csv']['person_column']) + ' (persons)' if cfg['csv']['person_column'] else 'image (no person column)'}"
    return cfg["split"] if cfg["split"] == "identity_disjoint" else f"standard partition {cfg['partition']}"


def identity_disjoint_split(persons: np.ndarray, fractions, seed: int) -> np.ndarray:
    """Divide persons (not images) into train/val/test by `fractions`, with a fixed seed."""
    unique = np.array(sorted(set(persons)), dtype=object)
    order = np.random.default_rng(seed).permutation(len(unique))
    n_train = int(round(fractions[0] * len(unique)))
    n_val = int(round(fractions[1] * len(unique)))
    assignment = {}
    for rank, idx in enumerate(order):
        assignment[unique[idx]] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    return np.array([assignment[p] for p in persons], dtype=object)


def _standard_split(record: dict, k: int, n: int) -> np.ndarray:
    partitions = record.get("partitions")
    if not partitions:
        raise LwparError("split 'standard' needs the dataset's annotation file (params annotation)")
    if k >= len(partitions):
        raise LwparError(f"partition {k}: the annotation has only {len(partitions)} partitions")
    split = np.full(n, "", dtype=object)
    for name in SPLITS:
        split[partitions[k][name]] = name
    return split


def carve_validation(split: np.ndarray, persons: np.ndarray, fractions, seed: int) -> np.ndarray:
    """For releases whose partitions have no validation part (RAPv1): move a seeded share of the
    training persons, fractions[1] / (fractions[0] + fractions[1]), to `val`."""
    if (split == "val").any():
        return split
    train = split == "train"
    share = fractions[1] / (fractions[0] + fractions[1])
    inner = identity_disjoint_split(persons[train], [1 - share, share, 0.0], seed)
    split = split.copy()
    split[np.nonzero(train)[0][inner == "val"]] = "val"
    return split


def _pick_persons(persons: np.ndarray, count: int, seed: int) -> np.ndarray:
    unique = np.array(sorted(set(persons)), dtype=object)
    chosen = np.random.default_rng(seed + 1).permutation(len(unique))[:count]
    return unique[np.sort(chosen)]


def _overlap(table: pd.DataFrame) -> dict:
    groups = {s: set(table.person[table.split == s]) for s in SPLITS}
    shared = {f"{a}&{b}": len(groups[a] & groups[b]) for a, b in (("train", "val"), ("train", "test"), ("val", "test"))}
    seen = groups["train"] | groups["val"]
    test = table[table.split == "test"]
    leaked = float(test.person.isin(seen).mean()) if len(test) else 0.0
    return {"shared_persons": shared, "test_images_with_person_in_train_or_val": round(leaked, 4)}


def _decode(path: str) -> str | None:
    from PIL import Image

    try:
        if os.path.getsize(path) == 0:
            return "empty file"
        with Image.open(path) as img:
            img.load()
        return None
    except FileNotFoundError:
        return "missing"
    except Exception as exc:  # PIL raises many types for damaged files
        return f"cannot decode ({type(exc).__name__}: {exc})"


def check_images(root: Path, relative: np.ndarray, workers: int | None = None) -> list[tuple[str, str]]:
    """Decode every image once; return (relative path, reason) of each bad one."""
    paths = [str(root / p) for p in relative]
    workers = workers or min(len(os.sched_getaffinity(0)), 8)
    if len(paths) < 200 or workers < 2:
        results = map(_decode, paths)
    else:
        pool = ProcessPoolExecutor(workers)
        results = pool.map(_decode, paths, chunksize=256)
    with Progress(len(paths), "checking images", unit="image") as progress:
        reasons = []
        for why in results:
            reasons.append(why)
            progress.update()
    bad = [(rel, why) for rel, why in zip(relative, reasons) if why]
    if len(paths) >= 200 and workers >= 2:
        pool.shutdown()
    return bad
