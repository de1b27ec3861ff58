"""Dataset kind `csv`: a user's own images and a labels CSV, parsed into the record every parser returns
(`parsers`). The header names the columns: an image path (relative to the images folder or archive),
optionally a person/identity and a split (train / val / test), and one 0/1 column per binary attribute,
every other column. Every problem names the file and its line or column; nothing is written before the
whole file is checked (the data stage writes its folder atomically).
"""

from __future__ import annotations

import csv
from pathlib import Path, PurePosixPath

import numpy as np

from lwpar.core.errors import LwparError

SPLITS = ("train", "val", "test")


def parse_labels_csv(path: Path, images_root: Path, options: dict, listing: list[str] | None = None) -> dict:
    """The record of `path` (`options`: the dataset's `csv` block: image_column, person_column,
    split_column, attributes). `listing`: the archive's image paths when they are not extracted yet.
    Rows whose image is absent are returned under `missing` (named by line), for the data stage to
    refuse or skip as it does for any release."""
    header, rows = _read(path)
    image_col, person_col, split_col = options["image_column"], options["person_column"], options["split_column"]
    for key, column in (("image_column", image_col), ("person_column", person_col), ("split_column", split_col)):
        if column is not None and column not in header:
            raise LwparError(f"{path}: no column {column!r} (csv.{key}); the header has: {', '.join(header)}")
    attributes = [c for c in header if c not in (image_col, person_col, split_col)]
    if not attributes:
        raise LwparError(f"{path}: no attribute column beside {', '.join(c for c in (image_col, person_col, split_col) if c)}")
    evaluated = options["attributes"] or attributes
    unknown = [a for a in evaluated if a not in attributes]
    if unknown:
        raise LwparError(f"{path}: csv.attributes names {', '.join(map(repr, unknown))}, not an attribute column "
                         f"(columns: {', '.join(attributes)})")
    index = {c: header.index(c) for c in header}
    present = None if listing is None else {PurePosixPath(p).as_posix() for p in listing}
    names, persons, labels, splits, missing, first_line = [], [], [], [], [], {}
    for line, row in rows:
        image = PurePosixPath(row[index[image_col]].strip()).as_posix()
        if not image or image == ".":
            raise LwparError(f"{path} line {line}: empty {image_col!r}")
        if image in first_line:
            raise LwparError(f"{path} lines {first_line[image]} and {line}: image {image!r} listed twice")
        first_line[image] = line
        values = []
        for attribute in attributes:
            cell = row[index[attribute]].strip()
            if cell not in ("0", "1"):
                raise LwparError(f"{path} line {line}, column {attribute!r}: label {cell!r} is not 0 or 1")
            values.append(cell == "1")
        split = row[index[split_col]].strip() if split_col else ""
        if split_col and split not in SPLITS:
            raise LwparError(f"{path} line {line}, column {split_col!r}: split {split!r} is not one of {', '.join(SPLITS)}")
        if not (image in present if present is not None else (images_root / image).is_file()):
            missing.append(f"{path.name} line {line}: {image}")
            continue
        names.append(image)
        persons.append(row[index[person_col]].strip() if person_col else f"img:{image}")
        labels.append(values)
        splits.append(split)
    if split_col:
        _check_persons_in_one_split(path, persons, splits, [first_line[n] for n in names])
    partitions = None
    if split_col:
        splits_array = np.asarray(splits, dtype=object)
        partitions = [{s: np.nonzero(splits_array == s)[0] for s in SPLITS}]
    return {"images": names, "persons": persons,
            "labels": np.asarray(labels, dtype=np.uint8).reshape(len(names), len(attributes)),
            "attributes": attributes, "evaluated": list(evaluated), "partitions": partitions, "missing": missing}


def _read(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and the (line number, cells) of every non-blank row."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = [c.strip() for c in next(reader, [])]
            rows = [(reader.line_num, cells) for cells in reader if any(c.strip() for c in cells)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise LwparError(f"{path}: unreadable as CSV ({exc})") from None
    if not header:
        raise LwparError(f"{path}: empty (expected a header naming the image column and the attributes)")
    duplicated = sorted({c for c in header if header.count(c) > 1})
    if duplicated:
        raise LwparError(f"{path}: column {duplicated[0]!r} appears twice in the header")
    for line, cells in rows:
        if len(cells) != len(header):
            raise LwparError(f"{path} line {line}: {len(cells)} cells, the header has {len(header)}")
    return header, rows


def _check_persons_in_one_split(path: Path, persons: list[str], splits: list[str], lines: list[int]) -> None:
    seen: dict[str, tuple[str, int]] = {}
    for person, split, line in zip(persons, splits, lines):
        if person in seen and seen[person][0] != split:
            first_split, first = seen[person]
            raise LwparError(f"{path} line {line}: person {person!r} is in {split}, and in {first_split} on line "
                             f"{first}: a split column must keep each person in one split")
        seen.setdefault(person, (split, line))


def check_attributes_trainable(table, evaluated: list[str], shown: str) -> None:
    """Every evaluated attribute has positives and negatives in the training split (else its loss
    weight and its mA are undefined)."""
    train = table[table.split == "train"]
    for attribute in evaluated:
        positives = int(train[attribute].sum())
        if positives in (0, len(train)):
            raise LwparError(f"{shown}: attribute {attribute!r} has {'no' if positives == 0 else 'only'} positives in "
                             f"the train split ({len(train)} images): drop it from csv.attributes or relabel")
