"""Every YAML config in configs/ parses, round-trips through --print_config, and trains one step on tiny data
files, writing what it promises: a last.ckpt with the data's linked image_shape, and its callbacks' images."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from lightning_ae.cli import main

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*/*.yaml"))


def test_there_are_configs() -> None:
    assert {p.parent.name for p in CONFIGS} >= {"mnist", "cifar10"}


@pytest.mark.parametrize("config", CONFIGS, ids=[f"{p.parent.name}/{p.stem}" for p in CONFIGS])
def test_config_fast_dev_run(
    config: Path, tiny_data_dir: Path, tiny_image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    spec = yaml.safe_load(config.read_text())
    codes = spec["data"]["class_path"].endswith("CodeDataModule")  # a prior on cached codes of an image datamodule
    images = "--data.init_args.images.init_args." if codes else "--data.init_args."
    if config.parent.name == "folder":  # the root is given on the command line; the cache goes to tmp_path
        source = [f"{images}root", str(tiny_image_folder), f"{images}data_dir", str(tmp_path),
                  f"{images}image_size", "64", f"{images}batch_size", "4"]
    else:
        source = [f"{images}data_dir", str(tiny_data_dir), f"{images}download", "false"]
    common = ["--trainer.accelerator", "cpu", "--trainer.devices", "1"]
    data_args = [*source, f"{images}val_size", "16", *common]
    if config.stem.endswith("_prior"):  # a prior needs its VQ model: one epoch of one batch writes its checkpoint
        vq_dir = Path(spec["model"]["init_args"]["vqvae_checkpoint"]).parent.name  # <dataset>_<config stem>
        vq_config = config.with_name(vq_dir.removeprefix(f"{config.parent.name}_") + ".yaml")
        vq_args = [arg.replace("--data.init_args.images.init_args.", "--data.init_args.") for arg in data_args]
        main(["fit", "--config", str(vq_config), *vq_args, "--trainer.max_epochs", "1",
              "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1"])
    if codes:
        data_args += ["--data.init_args.batch_size", "4", "--data.init_args.cache_dir", str(tmp_path / "codes")]
    main(["fit", "--config", str(config), *data_args, "--trainer.max_epochs", "1", "--trainer.limit_train_batches",
          "1", "--trainer.limit_val_batches", "1", "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
          "--trainer.logger.save_dir", "logs"])
    (last,) = Path("checkpoints").glob(f"*{config.stem}/last.ckpt")
    hparams = torch.load(last, map_location="cpu", weights_only=False)["hyper_parameters"]
    expected = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32), "folder": (3, 64, 64)}[config.parent.name]
    assert tuple(hparams["image_shape"]) == expected  # linked from the datamodule
    if config.stem != "classifier":  # the FD-C10 classifier draws nothing
        assert list(Path("logs").rglob("*.png")), f"{config.name}: its callbacks drew no image"


@pytest.mark.parametrize("config", CONFIGS, ids=[f"{p.parent.name}/{p.stem}" for p in CONFIGS])
def test_config_print_config(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The printed config is complete: parsed again, it prints the same config."""
    printed = []
    for source in (config, tmp_path / "printed.yaml"):
        with pytest.raises(SystemExit) as exc:
            main(["fit", "--config", str(source), "--print_config"])
        assert exc.value.code == 0
        printed.append(capsys.readouterr().out)
        (tmp_path / "printed.yaml").write_text(printed[-1])
    assert "class_path: lightning_ae." in printed[0]
    assert printed[1] == printed[0]
