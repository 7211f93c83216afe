"""Every ``lightning-ae ... --config C --ckpt_path P`` command of the manual (README and docs/) works: the
config's own ``fit`` writes ``P`` (``last.ckpt`` is the latest state, ``best.ckpt`` the lowest ``val/loss``), then the
command runs.
(The export commands, which take no config, are run by ``tests/test_ship_cli.py``.)"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import torch

from lightning_ae.cli import main

ROOT = Path(__file__).parents[1]


def manual_text() -> str:
    """The README and every page of the documentation site, one after the other."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return "\n".join(page.read_text() for page in pages)
TINY = ["--data.init_args.download", "false", "--data.init_args.batch_size", "16",
        "--data.init_args.val_size", "16", "--trainer.accelerator", "cpu",
        "--trainer.devices", "1", "--trainer.enable_progress_bar", "false", "--trainer.limit_val_batches", "1",
        "--trainer.limit_test_batches", "1", "--trainer.limit_predict_batches", "1"]


def readme_ckpt_commands() -> list[list[str]]:
    """The README's ``lightning-ae`` commands that pass ``--ckpt_path`` (continuation lines joined, comments cut)."""
    text = manual_text().replace("\\\n", " ")
    commands = [shlex.split(line, comments=True) for line in text.splitlines() if "--ckpt_path" in line
                and "--config" in line and line.lstrip().startswith("lightning-ae ")]
    return [c[1:] for c in commands]


COMMANDS = readme_ckpt_commands()


def test_the_readme_shows_checkpoint_commands() -> None:
    assert len(COMMANDS) >= 5 and {c[0] for c in COMMANDS} >= {"fit", "validate", "test", "predict"}


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c[:3]) + " " + c[-1] for c in COMMANDS])
def test_readme_ckpt_path_exists_after_the_configs_fit(command: list[str], tiny_data_dir: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = command[command.index("--config") + 1]
    ckpt_path = command[command.index("--ckpt_path") + 1]
    data = ["--data.init_args.data_dir", str(tiny_data_dir), *TINY]
    folder = not ckpt_path.endswith(".ckpt") and ckpt_path not in ("last", "best")  # a model folder
    main(["fit", "--config", str(ROOT / config), *data, "--trainer.max_epochs", "1",
          "--trainer.limit_train_batches", "2", *(["--save_pretrained", ckpt_path] if folder else [])])
    if ckpt_path.endswith(".ckpt"):
        checkpoint = torch.load(ckpt_path, weights_only=True)
        assert checkpoint["global_step"] == 2
    args = [str(ROOT / a) if a == config else a for a in command]
    extra = ["--trainer.max_epochs", "2", "--trainer.limit_train_batches", "2"] if command[0] == "fit" else []
    main([*args, *data, *extra])


def test_readme_custom_variant_example_trains(tmp_path: Path) -> None:
    """The README's "How a variant is built" example runs as printed and its extra term reaches the logs."""
    from lightning.pytorch import Trainer

    from lightning_ae import FakeImageDataModule

    text = manual_text()
    block = next(b for b in text.split("```python")[1:] if "class L2CodeAutoencoder" in b).split("```")[0]
    namespace: dict = {}
    exec(compile(block, "docs/models/index.md", "exec"), namespace)
    model = namespace["L2CodeAutoencoder"](weight=0.5, latent_dim=4, image_shape=(1, 8, 8))
    x = torch.rand(4, 1, 8, 8)
    out = model.loss_terms(x, "train")
    torch.testing.assert_close(out.loss, out.terms["recon"] + 0.5 * model.encode(x).pow(2).mean())
    trainer = Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    data = FakeImageDataModule(image_shape=(1, 8, 8), num_train=32, val_size=8, batch_size=8)
    trainer.fit(model, datamodule=data)
    assert "train/l2_code" in trainer.callback_metrics
    assert "val/l2_code" in trainer.validate(model, datamodule=data, verbose=False)[0]
