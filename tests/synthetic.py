"""Synthetic PETA-layout releases for tests: tiny images with known labels, any size.

Both layouts of the real release are produced: the official one (CUHK and PRID as PNG, VIPeR as
BMP) and the mirror's (everything JPEG). CUHK's per-file labels always name `.png` files.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from lwpar.data import peta

SUBSETS = {"3DPeS": "jpg", "CUHK": "png", "PRID": "png", "VIPeR": "bmp", "i-LID": "jpg"}


def image_bytes(fmt: str, size=(24, 48), seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, {"jpg": "JPEG", "png": "PNG", "bmp": "BMP"}[fmt])
    return buffer.getvalue()


def make_release(persons_per_subset: int = 4, images_per_person: int = 2, mirror_layout: bool = True,
                 seed: int = 0, size=(24, 48)):
    """Return (members: {name: bytes}, labels: {image name: 105-vector}) of a PETA-like release."""
    rng = np.random.default_rng(seed)
    members, truth = {}, {}
    for subset, ext in SUBSETS.items():
        ext = "jpg" if mirror_layout else ext
        folder = f"PETA dataset/{subset}/archive"
        lines = []
        for p in range(persons_per_subset):
            pid = f"{p + 1:04d}"
            bits = (rng.random(len(peta.ATTRIBUTES)) < 0.3).astype(np.uint8)
            tokens = [peta.ATTRIBUTES[i] for i in np.nonzero(bits)[0]]
            tokens = ["footwearSneakers" if t == "footwearSneaker" else t for t in tokens]
            if subset == "CUHK":  # one person per file, labelled by (PNG) file name
                name = f"{pid}.{ext}"
                members[f"{folder}/{name}"] = image_bytes(ext, size, seed + p)
                truth[f"{folder}/{name}"] = bits
                lines.append(" ".join([f"{pid}.png", *tokens]))
                continue
            lines.append(" ".join([pid, *tokens]))
            for k in range(images_per_person):
                name = f"{pid}_{k:03d}.{ext}"
                members[f"{folder}/{name}"] = image_bytes(ext, size, seed + 100 * p + k)
                truth[f"{folder}/{name}"] = bits
        members[f"{folder}/Label.txt"] = ("\n".join(lines) + "\n").encode()
    members["ReadMe.txt"] = b"synthetic PETA release for tests\n"
    return members, truth


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def write_peta_mat(path: Path, truth: dict, partitions: int = 5, seed: int = 0) -> None:
    """A PETA.mat for a synthetic release, rows in the release's canonical order."""
    import scipy.io

    names = sorted(truth, key=lambda n: (n.split("/")[1].lower(), n.split("/")[-1]))
    labels = np.stack([truth[n] for n in names])
    n = len(names)
    data = np.zeros((n, 4 + labels.shape[1]), dtype=np.float64)
    data[:, 0] = np.arange(1, n + 1)
    data[:, 4:] = labels
    attribute = np.empty((len(peta.ATTRIBUTES), 1), dtype=object)
    for i, a in enumerate(peta.ATTRIBUTES):
        attribute[i, 0] = np.array([a])
    rng = np.random.default_rng(seed)
    parts = np.empty((partitions, 1), dtype=object)
    for k in range(partitions):
        order = rng.permutation(n) + 1
        a, b = n // 2, n // 2 + n // 10
        parts[k, 0] = {"train": order[:a].reshape(-1, 1), "val": order[a:b].reshape(-1, 1),
                       "test": order[b:].reshape(-1, 1)}
    scipy.io.savemat(path, {"peta": {"data": data, "attribute": attribute,
                                     "selected_attribute": np.arange(5, 40).reshape(1, -1),
                                     "partion_attribute": parts}})


def params_for(tmp: Path, mirror: Path, **dataset) -> dict:
    """Default params with the mirror, data and results folders moved under `tmp`."""

    from lwpar.config import load_params

    params = load_params(Path(__file__).parents[1] / "params.yaml")
    params["paths"].update(data=str(tmp / "data"), results=str(tmp / "results"), mirror=str(mirror))
    params["datasets"]["peta"].update(sha256=None, **dataset)
    return params


def tiny_training_params(tmp: Path, mirror: Path, epochs: int = 3) -> dict:
    """Params for a seconds-long training run on a synthetic release."""
    params = params_for(tmp, mirror, annotation=None)
    params["runtime"].update(workers=0, threads=1, amp=False)  # float32: bit-identical resumes; bf16 has its own test
    params["models"] = {"tiny": {"arch": "alm", "backbone": "resnet18", "pretrained": False,
                                 "alm_head": "fused", "align_corners": False, "logit_bn": False,
                                 "input_size": [64, 32]}}
    params["experiment"]["models"] = ["tiny"]
    # frozen_stages: 0, whatever the default: a randomly initialised backbone has nothing worth freezing
    params["train"].update(epochs=epochs, batch_size=8, lr=0.001, warmup_epochs=1, schedule="cosine", frozen_stages=0)
    params["evaluate"]["batch_size"] = 16
    return params


def write_params(path: Path, params: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


ATTRIBUTES = ["hat", "bag", "skirt", "boots", "glasses"]  # a tiny artifact's attributes and input size
SIZE = (64, 32)


def images(folder: Path) -> list[Path]:
    """The photos `make_artifact` wrote, nested ones included."""
    return sorted(p for p in folder.rglob("*") if p.suffix in (".jpg", ".png"))


def make_artifact(tmp: Path, attributes: list[str], size) -> tuple[Path, Path]:
    """A tiny ALM exported as `lwpar export` does (its metadata: attributes, preprocessing) in
    tmp/artifact, and a folder tmp/images of photos of other sizes, one of them nested."""
    import torch

    from lwpar.data.preprocess import describe
    from lwpar.deploy.artifact import write_metadata
    from lwpar.deploy.export import export_onnx
    from lwpar.models import build_model

    torch.manual_seed(0)
    folder = tmp / "artifact"
    folder.mkdir()
    export_onnx(build_model("alm", "resnet18", len(attributes)).eval(), size, folder / "model.onnx")
    write_metadata(folder / "model.onnx", {"attributes": attributes, "preprocessing": describe(size)})
    images = tmp / "images"
    (images / "nested").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(160, 70), (90, 41), (300, 120), (64, 32), (57, 25)]):
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / ("nested" if i == 4 else "") / f"p{i}.{'png' if i % 2 else 'jpg'}")
    return folder, images


def write_labels_csv_release(images_dir: Path, labels_csv: Path, members: dict[str, bytes],
                             attributes: list[str] | None = None) -> int:
    """A release re-expressed as the `csv` dataset kind: its files under `images_dir` and a labels CSV
    (image path relative to `images_dir`, person, one 0/1 column per attribute, PETA's 35 evaluated
    ones by default) in the order the PETA parser reads them. Returns the number of rows."""
    import pandas as pd

    for name, data in members.items():
        (images_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (images_dir / name).write_bytes(data)
    record = peta.parse(images_dir)
    attributes = attributes or peta.EVALUATED
    columns = [peta.ATTRIBUTES.index(a) for a in attributes]
    table = pd.DataFrame(record["labels"][:, columns], columns=attributes)
    table.insert(0, "person", record["persons"])
    table.insert(0, "image", record["images"])
    labels_csv.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(labels_csv, index=False)
    return len(table)
