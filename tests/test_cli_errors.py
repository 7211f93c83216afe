"""Bad input on the command line ends in one line naming the bad thing, exit status 2, before any data is read."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_ae.cli import main

# data that cannot be read: a check that comes after data loading would fail with a DatasetFileError instead
NO_DATA = ["--data", "MNISTDataModule", "--data.data_dir", "/nonexistent", "--data.download", "false",
           "--trainer.accelerator", "cpu", "--trainer.max_steps", "1"]


def _refused(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    with pytest.raises(SystemExit) as exc:
        main(["fit", *args, *NO_DATA])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("lightning-ae: error: ")
    assert "Traceback" not in "\n".join(err)
    return err[-1]


def test_unknown_model_lists_the_known_ones_and_the_closest(capsys: pytest.CaptureFixture[str]) -> None:
    line = _refused(capsys, "--model", "VEA")
    assert "--model VEA" in line and "VQVAE" in line and "Autoencoder" in line and "did you mean VAE" in line


def test_unknown_class_path_and_datamodule(capsys: pytest.CaptureFixture[str]) -> None:
    assert "did you mean VAE" in _refused(capsys, "--model=lightning_ae.VEA")
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--model", "VAE", "--data", "MNISTDatamodule"])
    assert exc.value.code == 2
    assert "did you mean MNISTDataModule" in capsys.readouterr().err


@pytest.mark.parametrize(("args", "expected"), [
    (["--model", "VAE", "--model.beta", "-1"], "VAE: beta must be >= 0, got -1.0"),
    (["--model", "Autoencoder", "--model.latent_dim", "0"], "Autoencoder: latent_dim must be >= 1, got 0"),
    (["--model", "VQVAE", "--model.quantizer", "VectorQuantizer", "--model.quantizer.num_codes", "0"],
     "VectorQuantizer: num_codes must be >= 1, got 0"),
])
def test_value_refused_by_init_is_one_line(capsys: pytest.CaptureFixture[str], args: list[str],
                                           expected: str) -> None:
    assert _refused(capsys, *args) == f"lightning-ae: error: {expected}"


def test_debug_shows_the_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(Exception, match="beta must be >= 0"):
        main(["fit", "--model", "VAE", "--model.beta", "-1", "--debug", *NO_DATA])
    monkeypatch.setenv("LIGHTNING_AE_DEBUG", "1")
    with pytest.raises(Exception, match="beta must be >= 0"):
        main(["fit", "--model", "VAE", "--model.beta", "-1", *NO_DATA])


def test_missing_checkpoint_is_named(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "gone.ckpt"
    assert _refused(capsys, "--model", "VAE", "--ckpt_path", str(missing)) == (
        f"lightning-ae: error: --ckpt_path {missing}: no such file")


def test_file_that_is_no_checkpoint_is_named(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    line = _refused(capsys, "--model", "VAE", "--ckpt_path", str(text))
    assert str(text) in line and "not a Lightning checkpoint" in line and "weights_only" not in line
    tensors = tmp_path / "tensors.ckpt"
    torch.save({"weights": torch.zeros(2)}, tensors)
    assert "holds no state_dict" in _refused(capsys, "--model", "VAE", "--ckpt_path", str(tensors))


class Payload:
    """Any class that a safe (weights_only) load refuses."""


def test_unsafe_pickle_is_refused_without_advice_to_load_it_unsafely(capsys: pytest.CaptureFixture[str],
                                                                     tmp_path: Path) -> None:
    path = tmp_path / "unsafe.ckpt"
    torch.save({"state_dict": {}, "payload": Payload()}, path)
    line = _refused(capsys, "--model", "VAE", "--ckpt_path", str(path))
    assert str(path) in line and "Payload" in line and "weights_only" not in line


def test_checkpoint_of_another_model_class(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "vae.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"_class_path": "lightning_ae.VAE"}}, path)
    line = _refused(capsys, "--model", "VQVAE", "--ckpt_path", str(path))
    assert "lightning_ae.VAE" in line and "lightning_ae.VQVAE" in line


def test_the_command_exits_2_with_one_line() -> None:
    env = {**os.environ, "LIGHTNING_AE_DEBUG": ""}
    result = subprocess.run([sys.executable, "-m", "lightning_ae", "fit", "--model", "VAE", "--model.beta", "-1",
                             *NO_DATA], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "lightning-ae: error: VAE: beta must be >= 0, got -1.0"
    assert "Traceback" not in result.stderr
