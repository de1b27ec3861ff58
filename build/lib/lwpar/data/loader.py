"""Reading the canonical prepared form: the table, its sidecar, images and transforms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from lwpar.core.errors import LwparError
from lwpar.data import preprocess
from lwpar.core.io import read_json, sha256_file
from lwpar.data.preprocess import IMAGENET_MEAN, IMAGENET_STD  # noqa: F401 (the packaged backbones' input maps read them)


class Prepared:
    """A prepared dataset folder: `samples.csv` + `dataset.json` + images.

    Opened from the folder or from the manifest `lwpar data` writes beside it (what pipeline stages
    get); a manifest must still match the folder's table and sidecar.
    """

    def __init__(self, path: str | Path):
        path = Path(path)
        self.folder = _folder_of_manifest(path) if path.is_file() else path
        self.meta = read_json(self.folder / "dataset.json")
        table = self.folder / "samples.csv"
        if not table.is_file():
            raise LwparError(f"{table}: file not found (run `lwpar data` first)")
        self.table = pd.read_csv(table, dtype={"person": str})
        self.attributes: list[str] = self.meta["attributes"]
        missing = [a for a in self.attributes if a not in self.table.columns]
        if missing:
            raise LwparError(f"{table}: attribute columns missing: {', '.join(missing[:5])}")

    def split(self, name: str, limit: int | None = None) -> tuple[list[Path], np.ndarray]:
        rows = self.table[self.table.split == name]
        if limit is not None:
            rows = rows.iloc[:limit]
        paths = [self.folder / p for p in rows.image]
        return paths, rows[self.attributes].to_numpy(np.float32)

    def positive_rates(self) -> np.ndarray:
        return np.array([self.meta["positive_rate_train"][a] for a in self.attributes], dtype=np.float32)


def _folder_of_manifest(manifest: Path) -> Path:
    record = read_json(manifest)
    if not isinstance(record, dict) or not {"folder", "samples_sha256", "dataset_sha256"} <= set(record):
        raise LwparError(f"{manifest}: not a dataset manifest (expected a prepared folder or its .manifest.json)")
    folder = manifest.parent / record["folder"]
    for name, key in (("samples.csv", "samples_sha256"), ("dataset.json", "dataset_sha256")):
        if not (folder / name).is_file():
            raise LwparError(f"{folder / name}: file not found (run `lwpar data` first)")
        if sha256_file(folder / name) != record[key]:
            raise LwparError(f"{manifest}: does not match {folder / name} (prepared folder changed; rerun `lwpar data`)")
    return folder


class _Resize:
    """PIL's resize (`preprocess.resize`), the one every consumer of images shares."""

    def __init__(self, input_size):
        self.input_size = tuple(input_size)

    def __call__(self, image):
        return preprocess.resize(image, self.input_size)


class _Evaluation:
    """The evaluation input: exactly `preprocess.to_input`, which prediction without torch runs."""

    def __init__(self, input_size):
        self.spec = preprocess.describe(input_size)

    def __call__(self, image):
        return torch.from_numpy(preprocess.to_input(image, self.spec))


def build_transform(input_size, train: bool, hflip: bool = False, pad: int = 0, erase: float = 0.0):
    """Resize, then (training) pad-and-crop and flip, normalize, and with probability `erase` blank
    one random rectangle (random erasing, Zhong et al. 2020: the person re-identification recipe
    against memorizing identities, which PAR on identity-disjoint splits overfits to)."""
    from torchvision.transforms import v2

    if not train:
        return _Evaluation(input_size)
    steps = [_Resize(input_size), v2.ToImage()]
    if pad:
        steps.append(v2.Pad(pad))
        steps.append(v2.RandomCrop(tuple(input_size)))
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if erase > 0:
        steps.append(v2.RandomErasing(p=erase, value=0))     # 0 after normalization: the mean colour
    return v2.Compose(steps)


class ImageTable(Dataset):
    def __init__(self, paths: list[Path], labels: np.ndarray, transform):
        self.paths, self.labels, self.transform = paths, labels, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        image = preprocess.open_rgb(self.paths[index])
        return self.transform(image), torch.from_numpy(self.labels[index])


def make_loader(paths, labels, transform, batch_size: int, workers: int, shuffle: bool = False,
                seed: int = 0, drop_last: bool = False) -> DataLoader:
    """A loader whose order and augmentation depend only on `seed` (one generator per epoch)."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(ImageTable(paths, labels, transform), batch_size=batch_size, shuffle=shuffle,
                      num_workers=workers, generator=generator, drop_last=drop_last,
                      persistent_workers=False, pin_memory=torch.cuda.is_available())


CALIBRATION_BATCH = 16  # images per calibration batch


def calibration_batches(paths, transform, count: int, seed: int, batch_size: int = CALIBRATION_BATCH):
    """`count` images of `paths` drawn by `seed`, in file order, as numpy batches: the images INT8
    calibration sees, in `lwpar quantize` and in quantization-aware fine-tuning alike."""
    order = np.random.default_rng(seed).permutation(len(paths))[:count]
    table = ImageTable([paths[i] for i in sorted(order)], np.zeros((len(order), 1), np.float32), transform)
    for start in range(0, len(table), batch_size):
        yield np.stack([table[i][0].numpy() for i in range(start, min(start + batch_size, len(table)))])
