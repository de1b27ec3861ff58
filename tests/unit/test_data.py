"""The data stage on synthetic releases: parsing both layouts, splits, corrupt input, archive safety."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch

from lwpar.core.errors import LwparError
from lwpar.data import peta
from lwpar.data.archive import extract_zip
from lwpar.data.prepare import identity_disjoint_split, prepare

import synthetic


def make(tmp_path, mirror_layout=True, mat=False, members_hook=None, **dataset):
    members, truth = synthetic.make_release(mirror_layout=mirror_layout)
    if members_hook:
        members_hook(members)
    mirror = tmp_path / "mirror"
    synthetic.write_zip(mirror / "PETA.zip", members)
    if mat:
        synthetic.write_peta_mat(mirror / "PETA.mat", truth)
    dataset.setdefault("annotation", "PETA.mat" if mat else None)
    params = synthetic.params_for(tmp_path, mirror, **dataset)
    return params, truth


def run(tmp_path, params):
    out = tmp_path / "prepared"
    meta = prepare(params, "peta", out, tmp_path / "downloads")
    return out, meta, pd.read_csv(out / "samples.csv", dtype={"person": str})


@pytest.mark.parametrize("mirror_layout", [True, False], ids=["mirror-jpeg", "official-png-bmp"])
def test_labels_match_truth_in_both_layouts(tmp_path, mirror_layout):
    params, truth = make(tmp_path, mirror_layout=mirror_layout)
    out, meta, table = run(tmp_path, params)
    assert len(table) == len(truth)
    for _, row in table.iterrows():
        expected = truth[row.image.removeprefix("images/")]
        assert (row[peta.ATTRIBUTES].to_numpy(np.uint8) == expected).all(), row.image
    assert meta["attributes"] == peta.EVALUATED
    assert (out / table.image[0]).is_file()


def test_person_ids_and_identity_split(tmp_path):
    params, _ = make(tmp_path)
    _, meta, table = run(tmp_path, params)
    # CUHK labels each file; other subsets label persons owning several images.
    assert table[table.person.str.startswith("CUHK/")].person.is_unique
    assert table[table.person.str.startswith("3DPeS/")].groupby("person").size().eq(2).all()
    assert all(v == 0 for v in meta["identity_overlap"]["shared_persons"].values())
    persons = {s: set(table.person[table.split == s]) for s in ("train", "val", "test")}
    assert sum(map(len, persons.values())) == table.person.nunique()
    assert meta["split_persons"] == {"train": 12, "val": 4, "test": 4}


def test_identity_split_is_seeded():
    persons = np.array([f"p{i % 50}" for i in range(200)], dtype=object)
    a = identity_disjoint_split(persons, [0.6, 0.2, 0.2], 0)
    assert (a == identity_disjoint_split(persons, [0.6, 0.2, 0.2], 0)).all()
    assert (a != identity_disjoint_split(persons, [0.6, 0.2, 0.2], 1)).any()


def test_standard_partition_from_mat(tmp_path):
    params, truth = make(tmp_path, mat=True, split="standard", partition=2)
    _, meta, table = run(tmp_path, params)
    n = len(truth)
    assert meta["split_sizes"] == {"train": n // 2, "val": n // 10, "test": n - n // 2 - n // 10}
    assert meta["split_method"] == "standard partition 2"


@pytest.mark.fault
def test_mat_disagreeing_with_labels_fails(tmp_path):
    members, truth = synthetic.make_release()
    mirror = tmp_path / "mirror"
    synthetic.write_zip(mirror / "PETA.zip", members)
    first = sorted(truth, key=lambda n: (n.split("/")[1].lower(), n.split("/")[-1]))[0]
    truth[first] = 1 - truth[first]
    synthetic.write_peta_mat(mirror / "PETA.mat", truth)
    params = synthetic.params_for(tmp_path, mirror, annotation="PETA.mat")
    with pytest.raises(LwparError, match=r"PETA.mat: labels disagree with Label.txt on 1 images; first: row 1"):
        prepare(params, "peta", tmp_path / "prepared", tmp_path / "dl")
    assert not (tmp_path / "prepared").exists()


@pytest.mark.fault
def test_mat_of_wrong_layout_fails(tmp_path):
    import scipy.io
    params, _ = make(tmp_path, annotation="PETA.mat")
    scipy.io.savemat(tmp_path / "mirror" / "PETA.mat", {"something": np.zeros(3)})
    with pytest.raises(LwparError, match=r"PETA.mat: not a PETA.mat layout"):
        prepare(params, "peta", tmp_path / "prepared", tmp_path / "dl")


@pytest.mark.fault
def test_unknown_token_names_file_and_line(tmp_path):
    def hook(members):
        key = "PETA dataset/PRID/archive/Label.txt"
        members[key] = members[key].replace(b"\n", b" hatBeret\n", 1)
    params, _ = make(tmp_path, members_hook=hook)
    with pytest.raises(LwparError, match=r"PETA.zip: PETA dataset/PRID/archive/Label.txt:1: unknown attribute token 'hatBeret'"):
        prepare(params, "peta", tmp_path / "prepared", tmp_path / "dl")
    assert not (tmp_path / "prepared").exists()


def test_documented_discarded_tokens_are_ignored(tmp_path):
    def hook(members):
        key = "PETA dataset/PRID/archive/Label.txt"
        members[key] = members[key].replace(b"\n", b" accessoryFaceMask\n", 1)
    params, _ = make(tmp_path, members_hook=hook)
    _, meta, _ = run(tmp_path, params)
    assert meta["num_images"] > 0


@pytest.mark.parametrize("damage,reason", [
    (lambda data: data[: len(data) // 3], "cannot decode"),
    (lambda data: b"", "empty file"),
    (lambda data: b"this is not an image at all", "cannot decode"),
])
@pytest.mark.fault
def test_bad_images_fail_with_culprits_or_are_listed(tmp_path, damage, reason):
    victim = "PETA dataset/3DPeS/archive/0002_001.jpg"

    def hook(members):
        members[victim] = damage(members[victim])
    params, _ = make(tmp_path, members_hook=hook)
    with pytest.raises(LwparError, match=rf"1 bad or missing images .*PETA.zip: {victim}: {reason}"):
        prepare(params, "peta", tmp_path / "prepared", tmp_path / "dl")
    assert not (tmp_path / "prepared").exists()
    params["datasets"]["peta"]["skip_bad_images"] = True
    _, meta, table = run(tmp_path, params)
    assert len(meta["skipped"]) == 1 and victim in meta["skipped"][0]
    assert f"images/{victim}" not in set(table.image)


@pytest.mark.fault
def test_missing_image_named_by_label_file(tmp_path):
    params, _ = make(tmp_path, members_hook=lambda m: m.pop("PETA dataset/CUHK/archive/0003.jpg"))
    with pytest.raises(LwparError, match=r"PETA dataset/CUHK/archive/Label.txt: '0003': no image file"):
        prepare(params, "peta", tmp_path / "prepared", tmp_path / "dl")


@pytest.mark.fault
def test_truncated_archive_fails_cleanly(tmp_path):
    params, _ = make(tmp_path)
    archive = tmp_path / "mirror" / "PETA.zip"
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(LwparError, match=r"PETA.zip: truncated or corrupt zip archive"):
        prepare(params, "peta", tmp_path / "prepared", tmp_path / "dl")
    assert not (tmp_path / "prepared").exists()
    assert not list(tmp_path.glob(".prepared*"))


@pytest.mark.fault
def test_wrong_checksum_names_file_and_both_hashes(tmp_path):
    params, _ = make(tmp_path)
    params["datasets"]["peta"]["sha256"] = "0" * 64
    with pytest.raises(LwparError, match=r"PETA.zip: sha256 mismatch: expected 0{64}, got [0-9a-f]{64}"):
        prepare(params, "peta", tmp_path / "prepared", tmp_path / "dl")


@pytest.mark.parametrize("name,why", [("../evil.txt", "escapes the target folder"),
                                      ("/etc/evil.txt", "absolute path"),
                                      ("PETA dataset/../../evil.txt", "escapes the target folder")])
@pytest.mark.fault
def test_archive_members_cannot_escape(tmp_path, name, why):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok.txt", b"fine")
        zf.writestr(zipfile.ZipInfo(name), b"gotcha")
    with pytest.raises(LwparError, match=why):
        extract_zip(archive, tmp_path / "out")
    assert not (tmp_path / "out" / "ok.txt").exists(), "nothing may be written before every member is checked"
    assert not (tmp_path / "evil.txt").exists()


@pytest.mark.fault
def test_offline_without_mirror_says_where_to_put_archive(tmp_path):
    params, _ = make(tmp_path)
    params["paths"]["mirror"] = None
    params["datasets"]["peta"]["url"] = "http://127.0.0.1:9/PETA.zip"
    with pytest.raises(LwparError, match=r"cannot download http://127.0.0.1:9/PETA.zip .*put PETA.zip in the mirror"):
        prepare(params, "peta", tmp_path / "prepared", tmp_path / "dl")


def test_environment_variable_mirror_wins(tmp_path, monkeypatch):
    params, _ = make(tmp_path)
    real = params["paths"]["mirror"]
    params["paths"]["mirror"] = str(tmp_path / "nowhere")
    monkeypatch.setenv("LWPAR_MIRROR", real)
    _, meta, _ = run(tmp_path, params)
    assert meta["num_images"] > 0


def test_max_persons_keeps_whole_persons(tmp_path):
    params, _ = make(tmp_path, max_persons=6)
    _, meta, table = run(tmp_path, params)
    assert meta["num_persons"] == 6 == table.person.nunique()


def test_a_subset_extracts_only_its_images_and_prepares_what_a_full_extraction_does(tmp_path, monkeypatch):
    from lwpar.data import archive
    from lwpar.data.prepare import dataset_manifest

    members, _ = synthetic.make_release(persons_per_subset=6)
    synthetic.write_zip(tmp_path / "mirror" / "PETA.zip", members)
    params = synthetic.params_for(tmp_path, tmp_path / "mirror", annotation=None, max_persons=7)
    lazy = tmp_path / "lazy"
    prepare(params, "peta", lazy, tmp_path / "dl")
    table = pd.read_csv(lazy / "samples.csv")
    on_disk = sorted(p.relative_to(lazy).as_posix() for p in (lazy / "images").rglob("*")
                     if p.suffix.lower() in peta.IMAGE_SUFFIXES)
    assert on_disk == sorted(table.image) and len(on_disk) < len([m for m in members if m.endswith(".jpg")]) / 3

    # the same run with every member extracted, as before subsets were read lazily
    extract = archive.extract_zip
    monkeypatch.setattr(archive, "extract_zip", lambda source, target, members=None: extract(source, target))
    full = tmp_path / "full"
    prepare(params, "peta", full, tmp_path / "dl")
    assert (full / "samples.csv").read_text() == (lazy / "samples.csv").read_text()
    sidecars = [json.loads((d / "dataset.json").read_text()) for d in (lazy, full)]
    assert [{k: v for k, v in s.items() if k != "seconds"} for s in sidecars][0] == \
        {k: v for k, v in sidecars[1].items() if k != "seconds"}
    assert dataset_manifest(full, tmp_path / "m.json")["images_sha256"] == \
        dataset_manifest(lazy, tmp_path / "m.json")["images_sha256"]


@pytest.mark.fault
def test_a_subset_still_checks_the_images_it_keeps(tmp_path):
    members, _ = synthetic.make_release(persons_per_subset=6)
    params = synthetic.params_for(tmp_path, tmp_path / "mirror", annotation=None, max_persons=7)
    synthetic.write_zip(tmp_path / "mirror" / "PETA.zip", members)
    prepare(params, "peta", tmp_path / "first", tmp_path / "dl")
    victim = pd.read_csv(tmp_path / "first" / "samples.csv").image[0].removeprefix("images/")
    members[victim] = members[victim][:20]
    synthetic.write_zip(tmp_path / "mirror" / "PETA.zip", members)
    with pytest.raises(LwparError, match=rf"1 bad or missing images .*PETA.zip: {victim}: cannot decode"):
        prepare(params, "peta", tmp_path / "prepared", tmp_path / "dl")
    assert not (tmp_path / "prepared").exists()


def test_sidecar_records_sources_and_rates(tmp_path):
    params, _ = make(tmp_path)
    out, meta, table = run(tmp_path, params)
    saved = json.loads((out / "dataset.json").read_text())
    assert saved["sources"]["PETA.zip"] == meta["sources"]["PETA.zip"] and len(saved["sources"]["PETA.zip"]) == 64
    train = table[table.split == "train"]
    for attribute, rate in saved["positive_rate_train"].items():
        assert rate == pytest.approx(train[attribute].mean())


def test_manifest_opens_the_folder_and_refuses_a_changed_one(tmp_path):
    from lwpar.data.loader import Prepared

    params, _ = make(tmp_path)
    out = tmp_path / "prepared"
    manifest = tmp_path / "prepared.manifest.json"
    prepare(params, "peta", out, tmp_path / "downloads", manifest)
    record = json.loads(manifest.read_text())
    table = pd.read_csv(out / "samples.csv")
    assert record["folder"] == "prepared" and record["images"] == len(table)
    assert record["images_bytes"] == sum((out / p).stat().st_size for p in table.image)
    assert Prepared(manifest).split("train")[0] == Prepared(out).split("train")[0]
    (out / "samples.csv").write_text((out / "samples.csv").read_text().replace(",train,", ",test,", 1))
    with pytest.raises(LwparError, match=r"prepared.manifest.json: does not match .*samples.csv .*rerun `lwpar data`"):
        Prepared(manifest)
    manifest.write_text(json.dumps({"folder": "prepared"}))
    with pytest.raises(LwparError, match=r"prepared.manifest.json: not a dataset manifest"):
        Prepared(manifest)


def test_random_erasing_blanks_a_rectangle_in_training_only():
    from PIL import Image

    from lwpar.data.loader import build_transform

    image = Image.new("RGB", (40, 80), (200, 30, 90))   # far from the ImageNet mean: never 0 after normalizing
    torch.manual_seed(0)
    erased = build_transform((64, 32), True, erase=1.0)(image)
    blank = (erased == 0).all(0)
    rows, cols = blank.any(1).nonzero().flatten(), blank.any(0).nonzero().flatten()
    assert blank.sum() > 0
    # one axis-aligned rectangle, and every pixel in it blanked
    assert blank[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
    assert blank.sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    for transform in (build_transform((64, 32), True, erase=0.0), build_transform((64, 32), False)):
        assert not (transform(image) == 0).all(0).any()
