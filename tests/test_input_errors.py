"""Everything a user can get wrong, run through the real command: one line on stderr that names the bad path or
value, exit status 2, no traceback; ``--debug`` keeps the traceback. Two cases run as a separate process exactly
as a user types them; the others call the same entry point (``lightning_ae.cli.main``) in this process.

Each case writes its own bad input into ``tmp_path`` and returns the arguments and the text the line must hold.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_ae import VQVAE, Autoencoder, PixelCNNPrior, VectorQuantizer
from tests.conftest import write_image_folder

REPO = Path(__file__).parents[1]
TRAIN = ["--trainer.accelerator", "cpu", "--trainer.max_steps", "1", "--trainer.logger", "false",
         "--trainer.enable_progress_bar", "false"]
FAKE = ["--data", "FakeImageDataModule", "--data.num_train", "32", "--data.val_size", "16", "--data.batch_size", "16"]
Case = Callable[[Path], tuple[list[str], str]]


class Payload:
    """A global that safe loading refuses; its unpickling would run ``touch <marker>``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def _model_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    Autoencoder(latent_dim=4).save_pretrained(folder)
    return folder


def _edit_config(tmp_path: Path, edit: Callable[[dict], object]) -> Path:
    folder = _model_folder(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def offline_download(tmp_path: Path) -> tuple[list[str], str]:  # the README's main command, no network
    data = tmp_path / "data"
    return (["fit", "--config", str(REPO / "configs/mnist/ae.yaml"), "--data.data_dir", str(data), "--data.mirrors",
             '["http://127.0.0.1:9/"]', *TRAIN], str(data / "MNIST" / "raw"))


def missing_folder_root(tmp_path: Path) -> tuple[list[str], str]:
    root = tmp_path / "no_such_images"
    return ["fit", "--model", "Autoencoder", "--data", "ImageFolderDataModule", "--data.root", str(root),
            "--data.image_size", "[8, 8]", *TRAIN], str(root)


def missing_npz(tmp_path: Path) -> tuple[list[str], str]:
    path = tmp_path / "gone.npz"
    return ["fit", "--model", "Autoencoder", "--data", "ArrayDataModule", "--data.images", str(path), *TRAIN], str(path)


def nan_array(tmp_path: Path) -> tuple[list[str], str]:
    images = np.random.default_rng(0).random((20, 1, 8, 8)).astype(np.float32)
    images[7, 0, 3, 3] = np.nan
    np.save(tmp_path / "images.npy", images)
    return (["fit", "--model", "Autoencoder", "--data", "ArrayDataModule", "--data.images",
             str(tmp_path / "images.npy"), *TRAIN], "first at index 7")


def _bad_image(tmp_path: Path, name: str, content: Callable[[Path], bytes]) -> tuple[list[str], str]:
    root = tmp_path / "images"
    written = write_image_folder(root, ("a",), n=4, size=(8, 8), ext="jpg" if name.endswith("jpg") else "png")
    bad = root / "a" / name
    bad.write_bytes(content(next(iter(written))))
    return (["fit", "--model", "Autoencoder", "--data", "ImageFolderDataModule", "--data.root", str(root),
             "--data.image_size", "[8, 8]", "--data.val_size", "1", "--data.test_size", "1", *TRAIN], str(bad))


def truncated_jpeg(tmp_path: Path) -> tuple[list[str], str]:
    return _bad_image(tmp_path, "000.jpg", lambda good: good.read_bytes()[:60])


def text_named_png(tmp_path: Path) -> tuple[list[str], str]:
    return _bad_image(tmp_path, "notes.png", lambda good: b"these are my notes, not an image\n")


def folder_latent_dim_edited(tmp_path: Path) -> tuple[list[str], str]:
    folder = _edit_config(tmp_path, lambda c: c["init_args"].update(latent_dim=5))
    return ["test", "--ckpt_path", str(folder), *FAKE, *TRAIN], str(folder / "model.safetensors")


def folder_class_path_os_system(tmp_path: Path) -> tuple[list[str], str]:
    folder = _edit_config(tmp_path, lambda c: c.update(class_path="os.system"))
    return ["validate", "--ckpt_path", str(folder), *FAKE, *TRAIN], "'os.system' is refused"


def folder_broken_json(tmp_path: Path) -> tuple[list[str], str]:
    folder = _model_folder(tmp_path)
    (folder / "config.json").write_text('{"class_path": "lightning_ae.Autoencoder", "init_args": {')
    return ["predict", "--ckpt_path", str(folder), *FAKE, *TRAIN], f"{folder / 'config.json'} is not valid JSON"


def export_edited_folder(tmp_path: Path) -> tuple[list[str], str]:
    folder = _edit_config(tmp_path, lambda c: c["init_args"].update(latent_dim=5))
    return (["export", "--ckpt_path", str(folder), "--out", str(tmp_path / "out"), "--format", "torchscript"],
            str(folder / "model.safetensors"))


def export_broken_json(tmp_path: Path) -> tuple[list[str], str]:
    folder = _model_folder(tmp_path)
    (folder / "config.json").write_text("[1, 2")
    return (["export", "--ckpt_path", str(folder), "--out", str(tmp_path / "out")],
            f"{folder / 'config.json'} is not valid JSON")


def fit_from_model_folder(tmp_path: Path) -> tuple[list[str], str]:
    folder = _model_folder(tmp_path)
    return ["fit", "--ckpt_path", str(folder), *FAKE, *TRAIN], f"--ckpt_path {folder} is a model folder"


def code_running_ckpt_path(tmp_path: Path) -> tuple[list[str], str]:
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Payload(tmp_path / "PWNED")}, path)
    return ["fit", "--model", "Autoencoder", "--ckpt_path", str(path), *FAKE, *TRAIN], str(path)


def code_running_prior_submodel(tmp_path: Path) -> tuple[list[str], str]:
    """A prior's folder whose ``vqvae/`` was replaced by a code-running pickle."""
    vqvae = VQVAE(latent_dim=4, hidden_channels=8, res_channels=4, quantizer=VectorQuantizer(8, code_dim=4))
    vqvae.save_pretrained(tmp_path / "vq")
    folder = tmp_path / "prior"
    PixelCNNPrior(str(tmp_path / "vq"), channels=8, num_layers=1, kernel_size=3).save_pretrained(folder)
    for file in (folder / "vqvae").iterdir():
        file.unlink()
    (folder / "vqvae").rmdir()
    torch.save({"state_dict": {}, "payload": Payload(tmp_path / "PWNED")}, folder / "vqvae")
    return ["export", "--ckpt_path", str(folder), "--out", str(tmp_path / "out")], str(folder / "vqvae")


def code_running_nested_config(tmp_path: Path) -> tuple[list[str], str]:
    """A YAML config naming a code-running pickle as the prior's ``vqvae_checkpoint``."""
    path = tmp_path / "vqvae.ckpt"
    torch.save({"state_dict": {}, "payload": Payload(tmp_path / "PWNED")}, path)
    config = tmp_path / "prior.yaml"
    config.write_text(f"model:\n  class_path: lightning_ae.PixelCNNPrior\n  init_args:\n    vqvae_checkpoint: {path}\n")
    return ["fit", "--config", str(config), *FAKE, *TRAIN], str(path)


def code_running_transformer_prior_model(tmp_path: Path) -> tuple[list[str], str]:
    path = tmp_path / "vqvae.ckpt"
    torch.save({"state_dict": {}, "payload": Payload(tmp_path / "PWNED")}, path)
    return ["fit", "--model", "TransformerPrior", "--model.vqvae_checkpoint", str(path), *FAKE, *TRAIN], str(path)


def corrupt_code_cache(tmp_path: Path) -> tuple[list[str], str]:
    """A transformer prior's code cache truncated after a first run built it."""
    from lightning.pytorch import Trainer

    from lightning_ae import CodeDataModule, FakeImageDataModule, TransformerPrior

    VQVAE(latent_dim=4, hidden_channels=8, res_channels=4, quantizer=VectorQuantizer(8, code_dim=4)).save_pretrained(
        tmp_path / "vq")
    small = {"dim": 16, "num_layers": 1, "num_heads": 2}
    data = CodeDataModule(FakeImageDataModule(num_train=32, val_size=16, batch_size=16), cache_dir=str(tmp_path / "c"))
    Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False).fit(TransformerPrior(str(tmp_path / "vq"), **small), datamodule=data)
    (train,) = (tmp_path / "c").glob("train-*")
    (train / "codes.npy").write_bytes(b"\x93NUMPY")
    return (["fit", "--model", "TransformerPrior", "--model.vqvae_checkpoint", str(tmp_path / "vq"),
             *(f"--model.{k}={v}" for k, v in small.items()), "--data", "CodeDataModule", "--data.cache_dir",
             str(tmp_path / "c"), "--data.images", "FakeImageDataModule", "--data.images.num_train", "32",
             "--data.images.val_size", "16", "--data.images.batch_size", "16", *TRAIN], str(train))


def trainer_misconfigured(tmp_path: Path) -> tuple[list[str], str]:
    return (["fit", "--config", str(REPO / "configs/mnist/ae.yaml"), "--trainer.enable_checkpointing", "false"],
            "enable_checkpointing=False")


CASES = [offline_download, trainer_misconfigured, missing_folder_root, missing_npz, nan_array, truncated_jpeg,
         text_named_png, folder_latent_dim_edited, folder_class_path_os_system, folder_broken_json,
         export_edited_folder, export_broken_json, fit_from_model_folder, code_running_ckpt_path,
         code_running_prior_submodel, code_running_nested_config, code_running_transformer_prior_model,
         corrupt_code_cache]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LIGHTNING_AE_DEBUG": ""}
    return subprocess.run([sys.executable, "-m", "lightning_ae", *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=cwd)


def _run_in_process(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """The same entry point as the command, in this process (its exit status and stderr)."""
    from lightning_ae.cli import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    return int(exc.value.code), capsys.readouterr().err


SUBPROCESS = {offline_download, code_running_prior_submodel}  # as a user types them: the real process and stderr


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_bad_input_is_one_line_and_exit_2(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    args, named = case(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LIGHTNING_AE_DEBUG", raising=False)
    if case in SUBPROCESS:
        result = _run(args, tmp_path)
        code, stderr = result.returncode, result.stderr
    else:
        code, stderr = _run_in_process(args, capsys)
    errors = [line for line in stderr.splitlines() if line.startswith("lightning-ae")]
    assert code == 2, stderr[-3000:]
    assert len(errors) == 1 and ": error: " in errors[0], stderr[-3000:]
    assert named in errors[0]
    assert "Traceback" not in stderr
    assert not (tmp_path / "PWNED").exists(), "a pickle from a file ran code"


def test_debug_keeps_the_traceback(tmp_path: Path) -> None:
    args, _ = missing_npz(tmp_path)
    result = _run([*args, "--debug"], tmp_path)
    assert result.returncode != 2 and "Traceback" in result.stderr and "gone.npz" in result.stderr


def test_a_second_fit_keeps_the_first_runs_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Two fits of one config in one folder: the second is refused before it trains, the first run's best.ckpt
    and last.ckpt stay byte-identical; ``--ckpt_path last`` resumes and ``--overwrite`` starts over."""
    from lightning_ae.cli import main

    monkeypatch.chdir(tmp_path)
    config = tmp_path / "ae.yaml"
    config.write_text("""trainer:
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {dirpath: checkpoints/run, filename: best, monitor: val/loss, save_last: true,
                  enable_version_counter: false}
model:
  class_path: lightning_ae.Autoencoder
  init_args: {latent_dim: 4}
""")
    run = ["fit", "--config", str(config), *FAKE, *TRAIN]
    main(run)
    folder = tmp_path / "checkpoints" / "run"
    first = {p.name: p.read_bytes() for p in folder.glob("*.ckpt")}
    assert set(first) == {"best.ckpt", "last.ckpt"}
    with pytest.raises(SystemExit) as exc:
        main(run)
    assert exc.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(folder) in line and "--overwrite" in line and "--ckpt_path last" in line
    assert {p.name: p.read_bytes() for p in folder.glob("*.ckpt")} == first
    main([*run, "--trainer.max_steps", "2", "--ckpt_path", "last"])  # resuming continues the run
    main([*run, "--overwrite", "true"])
