"""The data stage on the real releases in the mirror (PETA in full; PA-100K and RAP annotations
with small generated images under their real file names)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lwpar.data import parsers, peta
from lwpar.data.prepare import prepare

import synthetic

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def peta_identity(real_mirror, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("peta")
    params = synthetic.params_for(tmp, real_mirror, annotation="PETA.mat")
    params["datasets"]["peta"]["sha256"] = "e2747d58fd4b1f96a16963ce7c29feaeaf03e518f1c188e37dbf6a20c1316e23"
    out = tmp / "prepared"
    meta = prepare(params, "peta", out, tmp / "dl")
    return params, meta, pd.read_csv(out / "samples.csv", dtype={"person": str}), tmp


def test_real_peta_identity_disjoint(peta_identity):
    _, meta, table, _ = peta_identity
    assert len(table) == 19000 and meta["num_images"] == 19000
    assert table.person.nunique() == 8699
    assert meta["attributes"] == peta.EVALUATED == peta.ATTRIBUTES[:35]
    assert meta["identity_overlap"]["shared_persons"] == {"train&val": 0, "train&test": 0, "val&test": 0}
    persons = meta["split_persons"]
    assert persons["train"] == round(0.6 * 8699) and persons["val"] == round(0.2 * 8699)
    assert sum(persons.values()) == 8699
    assert meta["skipped"] == [] and len(meta["label_entries_without_images"]) == 8


def test_real_peta_labels_equal_mat(peta_identity, real_mirror):
    _, _, table, _ = peta_identity
    mat = peta.load_mat(real_mirror / "PETA.mat")
    assert (table[peta.ATTRIBUTES].to_numpy(np.uint8) == mat["labels"]).all()


def test_real_peta_standard_partition_0(peta_identity, real_mirror):
    params, _, _, tmp = peta_identity
    params["datasets"]["peta"].update(split="standard", partition=0, max_persons=None)
    meta = prepare(params, "peta", tmp / "standard", tmp / "dl")
    assert meta["split_sizes"] == {"train": 9500, "val": 1900, "test": 7600}
    # The standard partitions leak identities (the reason identity_disjoint is the default).
    assert meta["identity_overlap"]["test_images_with_person_in_train_or_val"] > 0.5


def _image_tree(root, names):
    blob = synthetic.image_bytes("jpg", (8, 16))
    root.mkdir(parents=True)
    for name in names:
        (root / name).write_bytes(blob)


def _prepare_annotated(tmp, mirror, kind, annotation, names, **extra):
    params = synthetic.params_for(tmp, mirror)
    params["datasets"]["ds"] = {**params["datasets"]["peta"], "kind": kind, "url": None, "archive": "images",
                                "sha256": None, "annotation": annotation, "max_persons": 300, **extra}
    _image_tree(mirror / "images", names)
    meta = prepare(params, "ds", tmp / "prepared", tmp / "dl")
    return meta, pd.read_csv(tmp / "prepared" / "samples.csv", dtype={"person": str})


def test_real_pa100k_annotation(real_mirror, tmp_path):
    annotation = real_mirror / "annotations" / "PA100K_annotation.mat"
    record = parsers.parse_pa100k(annotation)
    assert len(record["names"]) == 100000 and len(record["evaluated"]) == 26
    assert [len(record["partitions"][0][s]) for s in ("train", "val", "test")] == [80000, 10000, 10000]
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "PA100K_annotation.mat").symlink_to(annotation)
    meta, table = _prepare_annotated(tmp_path, mirror, "pa100k", "PA100K_annotation.mat", record["names"],
                                     split="standard")
    assert meta["num_images"] == 300 and meta["attributes"][0] == "Female"
    labels = dict(zip(record["names"], record["labels"]))
    for _, row in table.head(20).iterrows():
        assert (row[meta["attributes"]].to_numpy(np.uint8) == labels[row.image.split("/")[-1]]).all()


def test_real_rapv1_annotation(real_mirror, tmp_path):
    annotation = real_mirror / "annotations" / "RAP_annotation.mat"
    record = parsers.parse_rapv1(annotation)
    assert len(record["names"]) == 41585 and len(record["evaluated"]) == 51
    assert [len(p["train"]) + len(p["test"]) for p in record["partitions"]] == [41585] * 5
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "RAP_annotation.mat").symlink_to(annotation)
    meta, table = _prepare_annotated(tmp_path, mirror, "rapv1", "RAP_annotation.mat", record["names"],
                                     split="standard")
    assert len(meta["attributes"]) == 51
    assert meta["split_sizes"]["val"] > 0, "RAPv1 has no val part: one is carved out of train"
    assert meta["identity_overlap"]["shared_persons"]["train&val"] == 0


def test_rapv2_documented_layout(tmp_path):
    import scipy.io

    n, attributes = 40, [f"attr{i}" for i in range(60)]
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (n, len(attributes)))
    names = np.empty((n, 1), dtype=object)
    for i in range(n):
        names[i, 0] = np.array([f"CAM01_{i:05d}.png"])
    attr = np.empty((len(attributes), 1), dtype=object)
    for i, a in enumerate(attributes):
        attr[i, 0] = np.array([a])
    parts = np.empty((5, 1), dtype=object)
    for k in range(5):
        order = rng.permutation(n) + 1
        parts[k, 0] = {"train_index": order[:24].reshape(1, -1), "val_index": order[24:30].reshape(1, -1),
                       "test_index": order[30:].reshape(1, -1)}
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    scipy.io.savemat(mirror / "RAP2.mat", {"RAP_annotation": {
        "name": names, "attribute": attr, "data": labels, "selected_attribute": np.arange(1, 55).reshape(1, -1),
        "partition_attribute": parts}})
    record = parsers.parse_rapv2(mirror / "RAP2.mat")
    assert len(record["evaluated"]) == 54 and record["evaluated"][0] == "attr0"
    assert (record["labels"] == (labels == 1)).all()
    meta, table = _prepare_annotated(tmp_path, mirror, "rapv2", "RAP2.mat", [n[0][0] for n in names],
                                     split="standard", partition=3, max_persons=None)
    assert meta["split_sizes"] == {"train": 24, "val": 6, "test": 10}
