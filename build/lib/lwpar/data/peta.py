"""PETA (Deng et al., ACM MM 2014): Label.txt parsing, the 105 binary columns, PETA.mat partitions.

Row order follows PETA.mat: subsets sorted case-insensitively, files sorted by name within a
subset. Images are looked up by file stem, because the mirror re-encodes PNG/BMP as JPEG while
CUHK's per-file labels still name `.png` files.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Callable

import numpy as np

from lwpar.core.errors import LwparError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
LABEL_FILE = "Label.txt"
PER_FILE_SUBSETS = {"CUHK"}  # labelled one line per image, not per person
TOKEN_ALIASES = {"footwearSneakers": "footwearSneaker"}  # Label.txt spelling -> PETA.mat spelling
# Labelled in Label.txt but discarded from the release's columns for having < 10 images (ReadMe.txt).
DISCARDED_TOKENS = {"accessoryFaceMask", "lowerBodyLogo", "accessoryShawl", "lowerBodyThickStripes"}

# The 105 binary columns in PETA.mat's order; the first 35 are the evaluated attributes.
ATTRIBUTES = [
    "personalLess30", "personalLess45", "personalLess60", "personalLarger60", "carryingBackpack",
    "carryingOther", "lowerBodyCasual", "upperBodyCasual", "lowerBodyFormal", "upperBodyFormal",
    "accessoryHat", "upperBodyJacket", "lowerBodyJeans", "footwearLeatherShoes", "upperBodyLogo",
    "hairLong", "personalMale", "carryingMessengerBag", "accessoryMuffler", "accessoryNothing",
    "carryingNothing", "upperBodyPlaid", "carryingPlasticBags", "footwearSandals", "footwearShoes",
    "lowerBodyShorts", "upperBodyShortSleeve", "lowerBodyShortSkirt", "footwearSneaker",
    "upperBodyThinStripes", "accessorySunglasses", "lowerBodyTrousers", "upperBodyTshirt",
    "upperBodyOther", "upperBodyVNeck",
    *(f"{part}{colour}" for part in ("upperBody", "lowerBody", "hair", "footwear") for colour in (
        "Black", "Blue", "Brown", "Green", "Grey", "Orange", "Pink", "Purple", "Red", "White", "Yellow")),
    "accessoryHeadphone", "personalLess15", "carryingBabyBuggy", "hairBald", "footwearBoots",
    "lowerBodyCapri", "carryingShoppingTro", "carryingUmbrella", "personalFemale", "carryingFolder",
    "accessoryHairBand", "lowerBodyHotPants", "accessoryKerchief", "lowerBodyLongSkirt",
    "upperBodyLongSleeve", "lowerBodyPlaid", "lowerBodyThinStripes", "carryingLuggageCase",
    "upperBodyNoSleeve", "hairShort", "footwearStocking", "upperBodySuit", "carryingSuitcase",
    "lowerBodySuits", "upperBodySweater", "upperBodyThickStripes",
]
EVALUATED = ATTRIBUTES[:35]
# Label entries of the official release that name no image file (checked on the release: its
# 19,000 images and PETA.mat's 19,000 rows agree without them). They are reported, not fatal;
# any other entry without an image is a missing image.
RELEASE_ORPHANS = {("CUHK", "0000"), ("CUHK", "0001"), ("TownCentre", "8"), ("TownCentre", "50"),
                   ("TownCentre", "122"), ("TownCentre", "180"), ("TownCentre", "187"), ("TownCentre", "189")}
_COLUMN = {name: i for i, name in enumerate(ATTRIBUTES)}


def find_root(tree: Path) -> Path:
    """The `PETA dataset` folder inside an extracted release."""
    for candidate in (tree / "PETA dataset", tree):
        if candidate.is_dir() and any((d / "archive" / LABEL_FILE).is_file() for d in candidate.iterdir() if d.is_dir()):
            return candidate
    raise LwparError(f"{tree.name}: no 'PETA dataset/<subset>/archive/{LABEL_FILE}' found: not a PETA release")


def _parse_label_file(path: Path, shown: str) -> dict[str, np.ndarray]:
    labels: dict[str, np.ndarray] = {}
    try:
        lines = path.read_text(encoding="utf-8", errors="strict").splitlines()
    except UnicodeDecodeError:
        raise LwparError(f"{shown}: not a text label file") from None
    for number, line in enumerate(lines, 1):
        tokens = line.split()
        if not tokens:
            continue
        key, row = tokens[0], np.zeros(len(ATTRIBUTES), dtype=np.uint8)
        for token in tokens[1:]:
            if token in DISCARDED_TOKENS:
                continue
            column = _COLUMN.get(TOKEN_ALIASES.get(token, token))
            if column is None:
                raise LwparError(f"{shown}:{number}: unknown attribute token {token!r}")
            row[column] = 1
        if key in labels:
            raise LwparError(f"{shown}:{number}: {key!r} labelled twice")
        labels[key] = row
    return labels


def image_files(tree: Path, listing: list[str] | None = None) -> Callable[[Path], list[str]]:
    """folder -> the sorted names of the images directly in it: read from the folder, or from
    `listing` (image paths relative to `tree`) when the images are not extracted yet."""
    if listing is None:
        return lambda folder: sorted(f.name for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    by_folder: dict[str, list[str]] = {}
    for name in listing:
        path = PurePosixPath(name)
        if path.suffix.lower() in IMAGE_SUFFIXES:
            by_folder.setdefault(path.parent.as_posix(), []).append(path.name)
    return lambda folder: sorted(by_folder.get(folder.relative_to(tree).as_posix(), []))


def parse(tree: Path, shown: str | None = None, listing: list[str] | None = None) -> dict:
    """Parse an extracted PETA release into rows of (image, person, subset, labels[105]).

    `shown` names the tree in error messages (the archive name), instead of a temporary folder.
    `listing` (the archive's member paths) stands in for the image files when only the label files
    are extracted, so a subset run extracts just the images it keeps.

    Returns a dict with `images` (paths relative to `tree`), `persons`, `subsets`, `labels`
    (N x 105 uint8), `missing` (label entries naming no image file) and `orphans` (the
    release's own known entries without images).
    """
    def show(path: Path) -> str:
        return f"{shown}: {path.relative_to(tree).as_posix()}" if shown else str(path)

    root = find_root(tree)
    files_in = image_files(tree, listing)
    images, persons, subsets, rows, missing, orphans = [], [], [], [], [], []
    for subset_dir in sorted((d for d in root.iterdir() if d.is_dir()), key=lambda d: d.name.lower()):
        folder = subset_dir / "archive"
        label_path = folder / LABEL_FILE
        if not label_path.is_file():
            raise LwparError(f"{show(label_path)}: label file missing")
        labels = _parse_label_file(label_path, show(label_path))
        per_file = subset_dir.name in PER_FILE_SUBSETS
        if per_file:  # keys are file names whose extension may differ from the file on disk
            labels = {Path(k).stem: v for k, v in labels.items()}
        used = set()
        for name in files_in(folder):
            stem = Path(name).stem
            key = stem if per_file else stem.split("_")[0]
            if key not in labels:
                raise LwparError(f"{show(folder / name)}: no entry for {key!r} in its {LABEL_FILE}")
            used.add(key)
            images.append((folder / name).relative_to(tree).as_posix())
            persons.append(f"{subset_dir.name}/{key}")
            subsets.append(subset_dir.name)
            rows.append(labels[key])
        for key in labels:
            if key not in used:
                entry = f"{show(label_path)}: {key!r}"
                (orphans if (subset_dir.name, key) in RELEASE_ORPHANS else missing).append(entry)
    if not images:
        raise LwparError(f"{root}: no images found")
    return {"images": images, "persons": persons, "subsets": subsets,
            "labels": np.stack(rows), "missing": missing, "orphans": orphans, "attributes": list(ATTRIBUTES),
            "evaluated": list(EVALUATED)}


def load_mat(path: Path) -> dict:
    """Read PETA.mat: labels (N x 105), attribute names, evaluated indices, 5 partitions (0-based)."""
    import scipy.io

    try:
        peta = scipy.io.loadmat(path)["peta"][0, 0]
        data = np.asarray(peta["data"])
        names = [str(a[0][0]) for a in peta["attribute"]]
        selected = np.asarray(peta["selected_attribute"]).ravel().astype(int)
        partitions = []
        for k in range(peta["partion_attribute"].shape[0]):
            part = peta["partion_attribute"][k, 0]
            partitions.append({s: np.asarray(part[s][0, 0]).ravel().astype(int) - 1 for s in ("train", "val", "test")})
    except (KeyError, IndexError, ValueError, TypeError) as exc:
        raise LwparError(f"{path}: not a PETA.mat layout (expected peta.data/attribute/selected_attribute/"
                         f"partion_attribute; {type(exc).__name__}: {exc})") from None
    except Exception as exc:  # scipy raises several types for a damaged file
        raise LwparError(f"{path}: cannot read .mat file ({exc})") from None
    if data.ndim != 2 or data.shape[1] != 4 + len(names):
        raise LwparError(f"{path}: peta.data has shape {data.shape}, expected N x {4 + len(names)}")
    return {"labels": data[:, 4:].astype(np.uint8), "attributes": names,
            "evaluated": [names[i - 5] for i in selected], "partitions": partitions,
            "subset_index": data[:, 2].astype(int)}


def check_against_mat(parsed: dict, mat: dict, mat_path: Path) -> None:
    """Fail loudly unless PETA.mat and Label.txt agree, row for row and column for column."""
    if mat["attributes"] != parsed["attributes"]:
        diff = next(i for i, (a, b) in enumerate(zip(mat["attributes"], parsed["attributes"])) if a != b)
        raise LwparError(f"{mat_path}: attribute {diff} is {mat['attributes'][diff]!r}, Label.txt parser has "
                         f"{parsed['attributes'][diff]!r}")
    if mat["labels"].shape != parsed["labels"].shape:
        raise LwparError(f"{mat_path}: {mat['labels'].shape[0]} rows, but the release has "
                         f"{parsed['labels'].shape[0]} labelled images")
    bad = np.nonzero((mat["labels"] != parsed["labels"]).any(axis=1))[0]
    if bad.size:
        i = int(bad[0])
        cols = [parsed["attributes"][c] for c in np.nonzero(mat["labels"][i] != parsed["labels"][i])[0]]
        raise LwparError(f"{mat_path}: labels disagree with Label.txt on {bad.size} images; first: row {i + 1} "
                         f"({parsed['images'][i]}) in {', '.join(cols[:5])}")
