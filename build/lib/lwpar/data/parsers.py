"""One parser per dataset, each returning the same record.

Record: images (paths relative to the image root), persons, labels (N x A uint8), attributes
(all label column names), evaluated (the evaluated attributes, in order), partitions (list of
{train, val, test} 0-based index arrays, or None), missing (label entries without an image).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np

from lwpar.core.errors import LwparError
from lwpar.data import peta
from lwpar.data.labels_csv import parse_labels_csv


def parse(kind: str, images_root: Path, annotation: Path | None, shown: str | None = None,
          listing: list[str] | None = None, options: dict | None = None) -> dict:
    """`listing`: the image paths relative to `images_root`, when the images are not extracted yet;
    `options`: the dataset's `csv` block (kind `csv`)."""
    if kind == "csv":
        if annotation is None:
            raise LwparError("dataset kind 'csv' needs its labels CSV (params annotation)")
        return parse_labels_csv(annotation, images_root, options, listing)
    if kind == "peta":
        record = peta.parse(images_root, shown, listing)
        record["partitions"] = None
        if annotation is not None:
            mat = peta.load_mat(annotation)
            peta.check_against_mat(record, mat, annotation)
            record["partitions"] = mat["partitions"]
            record["evaluated"] = mat["evaluated"]
        return record
    if annotation is None:
        raise LwparError(f"dataset kind {kind!r} needs its annotation file (params annotation)")
    parser = {"pa100k": parse_pa100k, "rapv1": parse_rapv1, "rapv2": parse_rapv2}[kind]
    record = parser(annotation)
    record["images"] = _locate(images_root, record.pop("names"), listing)
    return record


def _loadmat(path: Path) -> dict:
    import scipy.io

    try:
        return scipy.io.loadmat(path)
    except Exception as exc:  # scipy raises several types for a damaged file
        raise LwparError(f"{path}: cannot read .mat file ({exc})") from None


def _strings(cells) -> list[str]:
    return [str(np.asarray(c).ravel()[0]) for c in np.asarray(cells).ravel()]


def _layout_error(path: Path, expected: str, exc: Exception) -> LwparError:
    return LwparError(f"{path}: not the expected layout ({expected}; {type(exc).__name__}: {exc})")


def parse_pa100k(path: Path) -> dict:
    """PA-100K annotation.mat: 26 attributes, fixed 80,000 / 10,000 / 10,000 split, no person ids."""
    mat = _loadmat(path)
    try:
        attributes = _strings(mat["attributes"])
        names, labels, partition, start = [], [], {}, 0
        for split in ("train", "val", "test"):
            split_names = _strings(mat[f"{split}_images_name"])
            split_labels = np.asarray(mat[f"{split}_label"], dtype=np.uint8)
            if split_labels.shape != (len(split_names), len(attributes)):
                raise ValueError(f"{split}_label has shape {split_labels.shape}")
            names += split_names
            labels.append(split_labels)
            partition[split] = np.arange(start, start + len(split_names))
            start += len(split_names)
    except (KeyError, ValueError, IndexError) as exc:
        raise _layout_error(path, "attributes, {train,val,test}_images_name, {train,val,test}_label", exc) from None
    return {"names": names, "persons": list(names), "labels": np.concatenate(labels),
            "attributes": attributes, "evaluated": attributes, "partitions": [partition], "missing": []}


def parse_rapv1(path: Path, evaluated_count: int = 51) -> dict:
    """RAPv1 RAP_annotation.mat: 92 label columns, the first 51 evaluated, 5 train/test partitions.

    RAPv1 partitions have no validation part; the `standard` split carves one out of train by
    person (see prepare). Uncertain labels (2) count as negative, as in Rethinking of PAR.
    """
    mat = _loadmat(path)
    try:
        ann = mat["RAP_annotation"][0, 0]
        names = _strings(ann["imagesname"])
        attributes = _strings(ann["attribute_eng"])
        labels = np.asarray(ann["label"])
        identity = np.asarray(ann["identity"]).ravel()
        partitions = []
        for k in range(ann["partion"].shape[0]):
            part = ann["partion"][k, 0]
            while part.dtype == object and part.size == 1 and part.dtype.names is None:
                part = part.flat[0]
            partitions.append({"train": np.asarray(part["train_index"].flat[0]).ravel().astype(int) - 1,
                               "val": np.zeros(0, dtype=int),
                               "test": np.asarray(part["test_index"].flat[0]).ravel().astype(int) - 1})
        if labels.shape != (len(names), len(attributes)):
            raise ValueError(f"label has shape {labels.shape}")
    except (KeyError, ValueError, IndexError, TypeError) as exc:
        raise _layout_error(path, "RAP_annotation.{imagesname, attribute_eng, label, identity, partion}", exc) from None
    persons = [f"id{i}" if i >= 0 else f"img:{n}" for i, n in zip(identity, names)]
    return {"names": names, "persons": persons, "labels": (labels == 1).astype(np.uint8),
            "attributes": attributes, "evaluated": attributes[:evaluated_count],
            "partitions": partitions, "missing": []}


def parse_rapv2(path: Path) -> dict:
    """RAPv2 RAP_annotation.mat: name, attribute, data, selected_attribute (1-based),
    partition_attribute (5 partitions of train/val/test 1-based indices), person_identity if present."""
    mat = _loadmat(path)
    try:
        ann = mat["RAP_annotation"][0, 0]
        names = _strings(ann["name"])
        attributes = _strings(ann["attribute"])
        labels = np.asarray(ann["data"])
        selected = np.asarray(ann["selected_attribute"]).ravel().astype(int) - 1
        partitions = []
        for k in range(ann["partition_attribute"].shape[0]):
            part = ann["partition_attribute"][k, 0]
            partitions.append({s: np.asarray(part[f"{s}_index"][0, 0]).ravel().astype(int) - 1
                               for s in ("train", "val", "test")})
        identity = (np.asarray(ann["person_identity"]).ravel() if "person_identity" in (ann.dtype.names or ())
                    else np.full(len(names), -1))
        if labels.shape != (len(names), len(attributes)):
            raise ValueError(f"data has shape {labels.shape}")
    except (KeyError, ValueError, IndexError, TypeError) as exc:
        raise _layout_error(path, "RAP_annotation.{name, attribute, data, selected_attribute, partition_attribute}",
                            exc) from None
    persons = [f"id{i}" if i >= 0 else f"img:{n}" for i, n in zip(identity, names)]
    return {"names": names, "persons": persons, "labels": (labels == 1).astype(np.uint8),
            "attributes": attributes, "evaluated": [attributes[i] for i in selected],
            "partitions": partitions, "missing": []}


def _locate(root: Path, names: list[str], listing: list[str] | None = None) -> list[str]:
    """Find each named image under `root` (or in `listing`) by file name, wherever the release nests it."""
    paths = [PurePosixPath(n) for n in listing] if listing is not None else \
        [PurePosixPath(p.relative_to(root).as_posix()) for p in root.rglob("*")]
    index = {}
    for path in sorted(paths):
        if path.suffix.lower() in peta.IMAGE_SUFFIXES:
            index.setdefault(path.name, path.as_posix())
    # A name the annotation lists but the image tree lacks stays as a path that does not exist,
    # so the image check reports it with the others.
    return [index.get(n, n) for n in names]
