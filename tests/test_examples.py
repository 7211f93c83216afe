"""The drop-in example: a plain Lightning project (own datamodule with dict batches, own logger) trains two of our
variants with one of our callbacks."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.conftest import load_script

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "dropin_project.py"


def _load():
    return load_script(EXAMPLE, "dropin_project")


def test_dropin_project_trains_two_variants_with_a_probe() -> None:
    example = _load()
    results = example.main(["--epochs", "3", "--num-train", "512"])
    assert set(results) == {"Autoencoder", "VAE"}
    for result in results.values():
        assert result["last_val_loss"] < result["first_val_loss"]  # it learned, through the user's logger
        assert result["probe_accuracy"] > 0.7  # two classes: chance is 0.5
        assert result["logged_latent_dim"] == 8  # our hyperparameters reached the user's logger


def test_dropin_batches_are_dicts() -> None:
    example = _load()
    data = example.BarsDataModule(num_train=8, num_test=8, batch_size=4)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert set(batch) == {"image", "label"} and batch["image"].shape == (4, 1, 16, 16)
    images, labels = example.bars(2, seed=0)
    rows, cols = images[:, 0].mean(2), images[:, 0].mean(1)  # a bar lights up a full row or a full column
    for image_rows, image_cols, label in zip(rows, cols, labels, strict=True):
        assert (image_rows.max() > 0.99) == (label == 0) and (image_cols.max() > 0.99) == (label == 1)
    assert torch.all((images >= 0) & (images <= 1))
