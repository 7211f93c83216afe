"""The command line of issue 17: fit writes a model folder, test/predict/export take a folder or a checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_ae import VAE
from lightning_ae.cli import main

COMMON = ["--data", "FakeImageDataModule", "--data.image_shape", "[1,8,8]", "--data.num_train", "64",
          "--data.val_size", "16", "--data.num_test", "16", "--data.batch_size", "16",
          "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.enable_progress_bar", "false"]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A VAE fitted by the CLI for 2 steps, with its checkpoint and a model folder (--save_pretrained)."""
    root = tmp_path_factory.mktemp("fit")
    main(["fit", "--model", "VAE", "--model.latent_dim", "3", "--model.network", "mlp", *COMMON,
          "--trainer.max_steps", "2", "--trainer.default_root_dir", str(root), "--save_pretrained", str(root / "vae")])
    return root


def test_fit_writes_a_folder_matching_the_checkpoint(fitted: Path) -> None:
    (ckpt,) = fitted.glob("lightning_logs/version_*/checkpoints/*.ckpt")
    from_folder, from_ckpt = VAE.from_pretrained(fitted / "vae"), VAE.load_from_checkpoint(ckpt).eval()
    x = torch.rand(4, 1, 8, 8)
    assert from_folder.latent_dim == 3 and torch.equal(from_folder(x), from_ckpt(x))


def test_test_and_predict_take_a_model_folder(fitted: Path, tmp_path: Path) -> None:
    from lightning_ae import FakeImageDataModule

    for command in ("test", "predict"):  # no --model: the folder names its class and arguments
        main([command, *COMMON, "--trainer.default_root_dir", str(tmp_path / command), "--trainer.logger",
              "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(tmp_path / command),
              "--ckpt_path", str(fitted / "vae")])
    (metrics_csv,) = (tmp_path / "test").rglob("metrics.csv")
    assert "test/nll" in metrics_csv.read_text().splitlines()[0]  # the folder's VAE was tested
    (predictions,) = (tmp_path / "predict").rglob("predictions.pt")
    written = torch.load(predictions, weights_only=True)
    data = FakeImageDataModule(image_shape=(1, 8, 8), num_train=64, val_size=16, num_test=16, batch_size=16)
    data.setup("test")
    model = VAE.from_pretrained(fitted / "vae")
    with torch.no_grad():  # the predictions are the folder model's, on every test image in order
        expected = model(data.transform(data.test_set.images, training=False))
    torch.testing.assert_close(written["reconstruction"], expected)


@pytest.mark.parametrize("source", ["folder", "ckpt"])
def test_export_subcommand(fitted: Path, tmp_path: Path, source: str) -> None:
    path = fitted / "vae" if source == "folder" else next(fitted.glob("lightning_logs/version_*/checkpoints/*.ckpt"))
    main(["export", "--ckpt_path", str(path), "--format", "torchscript", "--out", str(tmp_path)])
    sidecar = json.loads((tmp_path / "export.json").read_text())
    assert sidecar["variant"] == "VAE" and (tmp_path / "encoder.pt").is_file() and (tmp_path / "decoder.pt").is_file()


def test_export_errors_are_one_line(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "lightning_ae", "export", "--ckpt_path", str(tmp_path / "no"),
                             "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"lightning-ae export: error: {tmp_path / 'no'} is neither a checkpoint file nor a model folder "
        "(config.json + model.safetensors)"]
