"""ArrayDataModule: arrays, tensors, .npy/.npz files; layouts, dtypes, labels, splits, and the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_ae import ArrayDataModule
from lightning_ae.data import DatasetFileError


def _images(n: int = 20, shape: tuple[int, ...] = (3, 4, 4)) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, *shape), dtype=np.uint8)


def test_channels_last_float_round_trip() -> None:
    images = _images()
    data = ArrayDataModule(torch.from_numpy(images.transpose(0, 2, 3, 1) / 255.0), channels_last=True, val_size=4,
                           test_size=2, batch_size=5)
    assert data.image_shape == (3, 4, 4) and data.num_classes is None
    data.setup()
    assert (len(data.train_set), len(data.val_set), len(data.test_set)) == (14, 4, 2)
    np.testing.assert_array_equal(data.images.numpy(), images)  # float in [0, 1] -> the same uint8
    batch = next(iter(data.train_dataloader()))
    assert isinstance(batch, torch.Tensor) and batch.dtype == torch.uint8 and batch.shape == (5, 3, 4, 4)
    floats = data.on_after_batch_transfer(batch, 0)
    assert floats.dtype == torch.float32 and floats.max() <= 1


def test_npy_is_memory_mapped_and_npz_keys(tmp_path: Path) -> None:
    images, labels = _images(), np.arange(20) % 4
    np.save(tmp_path / "x.npy", images)
    np.savez(tmp_path / "d.npz", images=images, labels=labels, y=labels[::-1].copy())
    data = ArrayDataModule(str(tmp_path / "x.npy"), labels=f"{tmp_path / 'd.npz'}:y", val_size=0.25, test_size=0)
    assert data.images.numpy().base is not None  # a view of the file map, not a copy
    assert data.num_classes == 4 and data.class_names == ["0", "1", "2", "3"]
    data.setup()
    x, y = data.train_set.__getitems__([0, 1])
    rows = data.train_set.indices[:2]
    assert torch.equal(x, torch.from_numpy(images)[rows]) and y.tolist() == labels[::-1][rows].tolist()
    npz = ArrayDataModule(str(tmp_path / "d.npz"), labels=str(tmp_path / "d.npz"), class_names=list("abcd"))
    assert npz.labels.tolist() == labels.tolist() and npz.class_names == list("abcd")


def test_separate_test_split() -> None:
    data = ArrayDataModule(_images(10), labels=np.zeros(10, np.int64), test_images=_images(3),
                           test_labels=np.array([0, 1, 2]), val_size=2)
    data.setup()
    assert (len(data.train_set), len(data.val_set), len(data.test_set)) == (8, 2, 3) and data.num_classes == 3


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"images": np.zeros((2, 8, 8, 3), np.uint8)}, ValueError, r"8 channels.*channels_last=True"),
        ({"images": np.full((2, 1, 4, 4), 1.5)}, ValueError, r"values in \[1.5, 1.5\], expected \[0, 1\]"),
        ({"images": np.zeros((2, 1, 4, 4), np.int32)}, ValueError, "uint8 or float.*int32"),
        ({"images": np.zeros((2, 4), np.uint8)}, ValueError, r"got shape \(2, 4\)"),
        ({"images": _images(4), "labels": np.zeros(3, np.int64)}, ValueError, r"4 integer class indices.*\(3,\)"),
        ({"images": _images(4), "labels": -np.ones(4, np.int64)}, ValueError, "labels must be >= 0"),
        ({"images": _images(4), "labels": np.zeros(4, np.int64), "test_images": _images(2)}, ValueError,
         "test_images need test_labels"),
        ({"images": "missing.npy"}, DatasetFileError, "array file missing.npy does not exist"),
    ],
    ids=["channels-last-hint", "float-range", "int-dtype", "ndim", "label-count", "negative-label", "test-labels",
         "missing-file"],
)
def test_bad_arrays_are_named(kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        ArrayDataModule(**kwargs)


def test_npz_without_the_key(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=_images())
    with pytest.raises(DatasetFileError, match=r"no array 'images' \(it holds \['x'\]\); name one as .*d.npz:<key>"):
        ArrayDataModule(str(tmp_path / "d.npz"))


def test_cli_trains_from_npz(tmp_path: Path) -> None:
    from lightning_ae.cli import build_cli

    np.savez(tmp_path / "d.npz", images=_images(40, (1, 8, 8)), labels=np.arange(40) % 2)
    cli = build_cli(["--model", "Autoencoder", "--data", "ArrayDataModule", "--data.images", str(tmp_path / "d.npz"),
                     "--data.labels", str(tmp_path / "d.npz"), "--data.batch_size", "8",
                     "--trainer.fast_dev_run", "true", "--trainer.accelerator", "cpu",
                     "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"], run=False)
    assert cli.model.image_shape == (1, 8, 8) and cli.model.num_classes == 2  # linked from the arrays
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 1 and torch.isfinite(cli.trainer.callback_metrics["train/loss"])
