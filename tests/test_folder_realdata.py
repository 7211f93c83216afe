"""ImageFolderDataModule on the real CIFAR-10 JPEG folder (LIGHTNING_AE_CIFAR10_JPEG, extracted by .ci/run): the
same images as CIFAR10DataModule on the pickles built from the same JPEGs, and a VQ-VAE fit from the folder config."""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from pathlib import Path

import pytest
import torch

from lightning_ae import CIFAR10DataModule, ImageFolderDataModule
from lightning_ae.cli import main

ROOT = Path(__file__).parents[1]


def _cache_dir(jpeg_dir: Path) -> str:
    return str(jpeg_dir.parent / "image-cache")  # beside the extracted folder: decoded once per CI machine


def _hashes(images: torch.Tensor, labels: torch.Tensor) -> Counter:
    return Counter((hashlib.sha1(image.numpy().tobytes()).hexdigest(), int(label))
                   for image, label in zip(images, labels, strict=True))


@pytest.mark.slow
@pytest.mark.realdata
def test_cifar_jpeg_folder_matches_the_pickles(real_cifar_jpeg_dir: Path, real_cifar_dir: Path) -> None:
    folder = ImageFolderDataModule(root=str(real_cifar_jpeg_dir), image_size=32, resize="none", val_size=0,
                                   cache_dir=_cache_dir(real_cifar_jpeg_dir))
    assert folder.class_names == CIFAR10DataModule.class_names and folder.num_classes == 10
    folder.prepare_data()
    folder.setup()
    pickles = CIFAR10DataModule(data_dir=str(real_cifar_dir), download=False, val_size=0)
    pickles.setup()
    splits = ((folder.train_set, pickles.train_set, 5000), (folder.test_set, pickles.test_set, 1000))
    for ours, theirs, per_class in splits:
        images, labels = ours.__getitems__(range(len(ours)))
        assert len(ours) == 10 * per_class
        assert Counter(labels.tolist()) == dict.fromkeys(range(10), per_class)
        assert _hashes(images, labels) == _hashes(theirs.images, theirs.labels)  # the same images, order aside


@pytest.mark.slow
@pytest.mark.realdata
def test_vqvae_fit_from_the_folder_config_lowers_val_loss(real_cifar_jpeg_dir: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(ROOT / "configs" / "folder" / "vqvae.yaml"),
          "--data.init_args.root", str(real_cifar_jpeg_dir), "--data.init_args.image_size", "32",
          "--data.init_args.resize", "none", "--data.init_args.cache_dir", _cache_dir(real_cifar_jpeg_dir),
          "--data.init_args.val_size", "1000", "--model.init_args.hidden_channels", "64",
          "--trainer.max_steps", "300", "--trainer.val_check_interval", "100", "--trainer.limit_val_batches", "10",
          "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.enable_progress_bar", "false",
          "--trainer.callbacks", "[]", "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
          "--trainer.logger.save_dir", str(tmp_path)])
    (metrics,) = tmp_path.glob("lightning_logs/version_*/metrics.csv")
    with open(metrics) as f:
        losses = [float(row["val/loss"]) for row in csv.DictReader(f) if row.get("val/loss")]
    assert len(losses) >= 2 and losses[-1] < losses[0], losses
