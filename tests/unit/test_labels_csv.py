"""Dataset kind `csv` (a user's images and labels CSV) through the data stage: the record, the split,
and each bad input refused in one line naming the file and its line or column, with nothing written."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from lwpar.config.checks import problems
from lwpar.core.errors import LwparError
from lwpar.data.prepare import prepare

import synthetic

ATTRIBUTES = ["hat", "bag", "boots"]


def labels_rows(persons: int = 12, images_per_person: int = 2, seed: int = 0) -> list[dict]:
    """One row per image: its path, person, a fixed split by person (every third person in val or
    test) and labels with positives and negatives in every split."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(persons):
        split = ("train", "train", "train", "val", "test")[p % 5] if p >= 5 else ("train", "val", "test", "train", "train")[p]
        for k in range(images_per_person):
            rows.append({"path": f"cam{p % 2}/p{p:02d}_{k}.jpg", "pid": f"p{p:02d}", "subset": split,
                         **{a: int((p + k + i) % 2 == 0) for i, a in enumerate(ATTRIBUTES)}})
            rows[-1]["bag"] = int(rng.random() < 0.5) if p > 3 else p % 2
    return rows


def make_csv_dataset(tmp_path, rows=None, header=None, text=None, csv_options=None, **dataset) -> dict:
    """Images under mirror/mycam/ and mirror/labels.csv; params whose dataset `mycam` reads them."""
    rows = labels_rows() if rows is None else rows
    mirror = tmp_path / "mirror"
    for i, row in enumerate(rows):
        image = mirror / "mycam" / row["path"]
        image.parent.mkdir(parents=True, exist_ok=True)
        image.write_bytes(synthetic.image_bytes("jpg", seed=i))
    if text is None:
        text = pd.DataFrame(rows, columns=header or columns(csv_options)).to_csv(index=False)
    (mirror / "labels.csv").write_text(text)
    params = synthetic.params_for(tmp_path, mirror)
    params["datasets"]["mycam"] = {
        **params["datasets"]["peta"], "kind": "csv", "url": None, "archive": "mycam", "sha256": None,
        "annotation": "labels.csv", "annotation_sha256": None,
        "csv": {"image_column": "path", "person_column": "pid", "split_column": None, "attributes": None,
                **(csv_options or {})}, **dataset}
    return params


def columns(csv_options=None) -> list[str]:
    """The labels CSV's header: a split column only where the dataset reads one (else it is an attribute)."""
    return ["path", "pid", *(["subset"] if (csv_options or {}).get("split_column") else []), *ATTRIBUTES]


def run(tmp_path, params):
    out = tmp_path / "prepared"
    meta = prepare(params, "mycam", out, tmp_path / "downloads")
    return out, meta, pd.read_csv(out / "samples.csv", dtype={"person": str})


def test_a_labels_csv_is_prepared_split_by_person_with_its_images_read_in_place(tmp_path):
    rows = labels_rows()
    out, meta, table = run(tmp_path, make_csv_dataset(tmp_path, rows))
    assert meta["attributes"] == ATTRIBUTES and meta["all_label_columns"] == ATTRIBUTES
    assert meta["kind"] == "csv" and meta["seed"] == 0 and "'pid'" in meta["split_method"]
    assert len(table) == len(rows) and meta["identity_overlap"]["test_images_with_person_in_train_or_val"] == 0
    assert sum(meta["split_persons"].values()) == 12
    assert (out / "images").is_symlink() and (out / "images").resolve() == (tmp_path / "mirror" / "mycam").resolve()
    expected = pd.DataFrame(rows).set_index("path")
    for row in table.itertuples():
        source = expected.loc[row.image.removeprefix("images/")]
        assert row.person == source.pid and [getattr(row, a) for a in ATTRIBUTES] == [source[a] for a in ATTRIBUTES]


def test_a_split_column_is_taken_as_given_and_the_evaluated_attributes_follow_params(tmp_path):
    rows = labels_rows()
    params = make_csv_dataset(tmp_path, rows, split="standard",
                              csv_options={"split_column": "subset", "attributes": ["boots", "hat"]})
    _, meta, table = run(tmp_path, params)
    given = {r["path"]: r["subset"] for r in rows}
    assert all(row.split == given[row.image.removeprefix("images/")] for row in table.itertuples())
    assert meta["attributes"] == ["boots", "hat"] and "'subset'" in meta["split_method"]


def test_without_a_person_column_the_split_is_by_image(tmp_path):
    params = make_csv_dataset(tmp_path, header=["path", *ATTRIBUTES], csv_options={"person_column": None})
    _, meta, table = run(tmp_path, params)
    assert table.person.nunique() == len(table) and "by image" in meta["split_method"]


def _text_with(rows, edit, options) -> str:
    frame = pd.DataFrame(rows, columns=columns(options)).astype(str)
    edit(frame)
    return frame.to_csv(index=False)


def _relabel(frame):
    frame.loc[4, "bag"] = "yes"


def _duplicate(frame):
    frame.loc[6, "path"] = frame.loc[2, "path"]


def _unknown_image(frame):
    frame.loc[3, "path"] = "cam9/nobody.jpg"


@pytest.mark.parametrize("edit, options, expected", [
    (_relabel, {}, "labels.csv line 6, column 'bag': label 'yes' is not 0 or 1"),
    (_duplicate, {}, "labels.csv lines 4 and 8: image 'cam1/p01_0.jpg' listed twice"),
    (lambda f: None, {"split_column": "subset"}, None),
    (lambda f: None, {"image_column": "file"}, "labels.csv: no column 'file' (csv.image_column); the header has: path"),
    (_unknown_image, {}, "labels.csv line 5: cam9/nobody.jpg: no image file"),
], ids=["label not 0/1", "duplicated image", "a consistent split column", "no image column", "missing image"])
def test_bad_labels_are_refused_in_one_line_naming_file_line_and_column(tmp_path, edit, options, expected):
    rows = labels_rows()
    params = make_csv_dataset(tmp_path, rows, text=_text_with(rows, edit, options), csv_options=options,
                              split="standard" if options.get("split_column") else "identity_disjoint")
    if expected is None:  # a consistent split column: prepared
        run(tmp_path, params)
        return
    with pytest.raises(LwparError) as caught:
        run(tmp_path, params)
    assert expected in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "prepared").exists()


def test_a_person_in_two_splits_names_both_lines(tmp_path):
    rows = labels_rows()
    rows[1]["subset"] = "test"  # person p00's second image, its first in train
    params = make_csv_dataset(tmp_path, rows, split="standard", csv_options={"split_column": "subset"})
    with pytest.raises(LwparError, match=r"labels.csv line 3: person 'p00' is in test, and in train on line 2"):
        run(tmp_path, params)
    assert not (tmp_path / "prepared").exists()


def test_an_attribute_without_positives_in_training_is_refused_naming_it(tmp_path):
    rows = labels_rows()
    for row in rows:
        if row["subset"] == "train":
            row["boots"] = 0
    params = make_csv_dataset(tmp_path, rows, split="standard", csv_options={"split_column": "subset"})
    with pytest.raises(LwparError, match=r"attribute 'boots' has no positives in the train split"):
        run(tmp_path, params)
    assert not (tmp_path / "prepared").exists()


def test_a_missing_or_unreadable_image_is_refused_or_skipped_and_counted(tmp_path):
    rows = labels_rows()
    params = make_csv_dataset(tmp_path, rows)
    (tmp_path / "mirror" / "mycam" / rows[5]["path"]).write_bytes(b"not a jpeg")
    (tmp_path / "mirror" / "mycam" / rows[8]["path"]).unlink()
    with pytest.raises(LwparError, match=r"2 bad or missing images .*p02_1.jpg: cannot decode.*line 10: "):
        run(tmp_path, params)
    params["datasets"]["mycam"]["skip_bad_images"] = True
    _, meta, table = run(tmp_path, params)
    assert len(table) == len(rows) - 2 and len(meta["skipped"]) == 2


def test_the_labels_header_and_rows_must_agree(tmp_path):
    rows = labels_rows()
    text = "path,pid,hat,hat\n" + "".join(f"{r['path']},{r['pid']},0,1\n" for r in rows)
    with pytest.raises(LwparError, match=r"labels.csv: column 'hat' appears twice in the header"):
        run(tmp_path, make_csv_dataset(tmp_path, rows, text=text))
    text = "path,pid,hat,bag\n" + "".join(f"{r['path']},{r['pid']},0\n" for r in rows)
    with pytest.raises(LwparError, match=r"labels.csv line 2: 3 cells, the header has 4"):
        run(tmp_path, make_csv_dataset(tmp_path, rows, text=text))


def test_the_configuration_names_what_a_csv_dataset_lacks(tmp_path):
    params = make_csv_dataset(tmp_path)
    ds = params["datasets"]["mycam"]
    params["experiment"]["datasets"] = ["mycam"]
    assert not [p for p in problems(params) if p[0].startswith("datasets.mycam")]
    ds.update(annotation=None, split="standard")
    found = dict(p for p in problems(params) if p[0].startswith("datasets.mycam"))
    assert "labels from this CSV" in found["datasets.mycam.annotation"] and "split_column" in found["datasets.mycam.split"]
    params["datasets"]["peta"]["csv"] = {**ds["csv"]}
    assert any(k == "datasets.peta.csv" for k, _ in problems(params))
    json.dumps(ds)  # the dataset entry stays plain data (it is hashed into the data job's params)
