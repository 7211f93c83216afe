"""The lightning-ae command end to end: short class names, links, every subcommand, checkpoints, real data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

from lightning_ae import Autoencoder, FakeImageDataModule, MNISTDataModule
from lightning_ae.cli import main

ROOT = Path(__file__).parents[1]


def _fit(tmp_path: Path, data_dir: Path, *extra: str) -> Path:
    main([
        "fit", "--model", "Autoencoder", "--model.recon_loss", "bce",
        "--data", "MNISTDataModule", "--data.data_dir", str(data_dir), "--data.download", "false",
        "--data.val_size", "16", "--data.batch_size", "16",
        "--trainer.max_epochs", "2", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
        "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false", *extra,
    ])
    (ckpt,) = (tmp_path / "lightning_logs").glob("version_*/checkpoints/*.ckpt")
    return ckpt


def test_fit_checkpoint_loads_with_no_arguments(tmp_path: Path, tiny_data_dir: Path) -> None:
    from lightning_ae.cli import build_cli

    cli = build_cli([  # the CLI's own model and trainer, so the checkpoint is compared with the model that trained
        "--model", "Autoencoder", "--model.recon_loss", "bce", "--model.latent_dim", "7",
        "--data", "MNISTDataModule", "--data.data_dir", str(tiny_data_dir), "--data.download", "false",
        "--data.val_size", "16", "--data.batch_size", "16", "--trainer.max_epochs", "2",
        "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.default_root_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false"], run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    (ckpt,) = (tmp_path / "lightning_logs").glob("version_*/checkpoints/*.ckpt")
    model = Autoencoder.load_from_checkpoint(ckpt)  # nothing else: the config is in the checkpoint
    assert model.latent_dim == 7 and model.image_shape == (1, 28, 28) and model.num_classes == 10
    trained = cli.model.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())
    x = torch.rand(2, 1, 28, 28)
    out = model.eval()(x)
    assert out.shape == x.shape and torch.all((out > 0) & (out < 1))  # sigmoid of the BCE logits
    torch.testing.assert_close(out, torch.sigmoid(model.decoder(model.encoder(x))))


def test_validate_test_predict_subcommands(tmp_path: Path, tiny_data_dir: Path) -> None:
    ckpt = _fit(tmp_path / "fit", tiny_data_dir)
    common = ["--model", "Autoencoder", "--model.recon_loss", "bce", "--data", "MNISTDataModule",
              "--data.data_dir", str(tiny_data_dir), "--data.download", "false", "--data.val_size", "16",
              "--trainer.accelerator", "cpu", "--trainer.default_root_dir", str(tmp_path), "--ckpt_path", str(ckpt)]
    data = MNISTDataModule(data_dir=str(tiny_data_dir), download=False, val_size=16)
    model = Autoencoder.load_from_checkpoint(ckpt)
    plain = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    expected = {**plain.validate(model, datamodule=data, verbose=False)[0],
                **plain.test(model, datamodule=data, verbose=False)[0]}
    for command in ("validate", "test"):
        save_dir = tmp_path / command
        main([command, *common, "--trainer.logger", "CSVLogger", "--trainer.logger.save_dir", str(save_dir)])
        (metrics_csv,) = save_dir.glob("lightning_logs/version_*/metrics.csv")
        header, values = metrics_csv.read_text().splitlines()[:2]
        logged = {k: float(v) for k, v in zip(header.split(","), values.split(","), strict=True) if v}
        stage = "val" if command == "validate" else "test"
        for key in (f"{stage}/loss", f"{stage}/mse", f"{stage}/psnr"):
            assert logged[key] == pytest.approx(expected[key], rel=1e-5), key  # the loaded model's metrics
    main(["predict", *common])
    (written,) = tmp_path.glob("lightning_logs/version_*/predictions.pt")
    predictions = torch.load(written, weights_only=True)
    test_images = torch.stack([data.transform(b[0], False) for b in [data.test_set.__getitems__(range(32))]])[0]
    assert predictions["index"].tolist() == list(range(32))
    with torch.no_grad():
        torch.testing.assert_close(predictions["reconstruction"], model.eval()(test_images))


def test_data_shape_is_linked_into_the_model(tmp_path: Path, tiny_data_dir: Path) -> None:
    ckpt = _fit(tmp_path, tiny_data_dir, "--data", "CIFAR10DataModule", "--data.val_size", "20",
                "--model.recon_loss", "mse", "--model.network", "conv")
    model = Autoencoder.load_from_checkpoint(ckpt)
    assert model.image_shape == (3, 32, 32) and model.network == "conv"


def test_bad_config_value_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--model", "Autoencoder", "--model.recon_loss", "l7", "--data", "FakeImageDataModule"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    # the parser's message (not the echoed input, which always holds the word): the allowed values are named
    assert "Expected a Literal['mse', 'bce']" in err or ("'mse'" in err and "'bce'" in err), err


def test_console_script_and_module() -> None:
    top = subprocess.run(["lightning-ae", "--help"], capture_output=True, text=True, check=True).stdout
    assert all(f"{command}" in top for command in ("fit", "validate", "test", "predict"))
    fit = subprocess.run([sys.executable, "-m", "lightning_ae", "fit", "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert "--model" in fit and "--data" in fit and "--trainer.max_epochs" in fit and "--ckpt_path" in fit


def test_python_api_in_a_plain_trainer(tmp_path: Path) -> None:
    """No CLI: the module and datamodule in somebody else's Trainer, with a custom encoder/decoder."""
    from torch import nn

    encoder = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 6))
    decoder = nn.Sequential(nn.Linear(6, 3 * 8 * 8), nn.Unflatten(1, (3, 8, 8)))
    data = FakeImageDataModule(image_shape=(3, 8, 8), num_train=256, val_size=64)
    model = Autoencoder(encoder=encoder, decoder=decoder, image_shape=data.image_shape)
    trainer = Trainer(max_epochs=3, accelerator="cpu", default_root_dir=tmp_path, enable_progress_bar=False)
    trainer.fit(model, datamodule=data)
    metrics = trainer.test(model, datamodule=data, verbose=False)[0]
    assert {"test/loss", "test/mse", "test/psnr"} <= metrics.keys()
    predictions = trainer.predict(model, datamodule=data)
    assert predictions[0]["reconstruction"].shape == (32, 3, 8, 8)
    loaded = Autoencoder.load_from_checkpoint(trainer.checkpoint_callback.best_model_path, weights_only=False)
    torch.testing.assert_close(loaded.encoder[1].weight, model.encoder[1].weight)


@pytest.mark.slow
@pytest.mark.realdata
def test_real_mnist_fit_lowers_validation_loss(tmp_path: Path, real_mnist_dir: Path) -> None:
    """A real `lightning-ae fit` on MNIST for 300 steps: the validation loss ends far below where it started."""
    data = MNISTDataModule(data_dir=str(real_mnist_dir), download=False)
    start = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False).validate(
        Autoencoder(recon_loss="bce", num_classes=10), datamodule=data, verbose=False)[0]["val/mse"]
    result = subprocess.run(
        [sys.executable, "-m", "lightning_ae", "fit", "--config", str(ROOT / "configs/mnist/ae.yaml"),
         "--data.data_dir", str(real_mnist_dir), "--data.download", "false", "--trainer.max_steps", "300",
         "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
         "--trainer.default_root_dir", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = tmp_path / "checkpoints" / "mnist_ae" / "last.ckpt"  # the config's ModelCheckpoint
    end = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False).validate(
        Autoencoder.load_from_checkpoint(ckpt), datamodule=data, verbose=False)[0]["val/mse"]
    assert end < 0.3 * start, (start, end)


def test_lr_scheduler_from_yaml_is_applied(tmp_path: Path, tiny_data_dir: Path) -> None:
    ckpt = _fit(tmp_path, tiny_data_dir, "--model.lr_scheduler", "torch.optim.lr_scheduler.StepLR",
                "--model.lr_scheduler.step_size", "1", "--model.lr_scheduler.gamma", "0.5")
    state = torch.load(ckpt, weights_only=False)
    assert state["lr_schedulers"][0]["_last_lr"] == [1e-3 * 0.5**2]  # two epochs, halved after each
    reloaded = Autoencoder.load_from_checkpoint(ckpt).configure_optimizers()
    scheduler = reloaded["lr_scheduler"]["scheduler"]
    assert isinstance(scheduler, torch.optim.lr_scheduler.StepLR) and scheduler.gamma == 0.5
    assert scheduler.step_size == 1 and reloaded["lr_scheduler"]["monitor"] == "val/loss"
