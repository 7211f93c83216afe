"""The ``lightning-ae`` command: a LightningCLI with subclass mode for model and data.

``lightning-ae fit --config configs/mnist/ae.yaml``; ``--model VAE`` / ``--data CIFAR10DataModule`` pick classes
by short name; the datamodule's ``image_shape``, ``num_classes`` and ``pixel_range`` are linked into the model.
A Rich progress bar and model summary are added unless the config brings its own or disables them.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelSummary, ProgressBar, RichModelSummary, RichProgressBar
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

import lightning_ae  # noqa: F401  (imports every model and datamodule so short class names resolve)


class LightningAECLI(LightningCLI):
    """LightningCLI that links the data's shape, class count and pixel range into the model."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for attr in ("image_shape", "num_classes", "pixel_range"):
            parser.link_arguments(f"data.{attr}", f"model.init_args.{attr}", apply_on="instantiate")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Adds :func:`rich_defaults` to the configured ``trainer.callbacks`` (which stay as they are)."""
        config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        callbacks = config.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
        return super().instantiate_trainer(**{**kwargs, "callbacks": callbacks + rich_defaults(config, callbacks)})


def rich_defaults(trainer_config: dict[str, Any], callbacks: list[Callback]) -> list[Callback]:
    """A ``RichProgressBar`` and a ``RichModelSummary``, each unless disabled or already among ``callbacks``."""
    defaults: list[Callback] = []
    for enabled, kind, default in (("enable_progress_bar", ProgressBar, RichProgressBar),
                                   ("enable_model_summary", ModelSummary, RichModelSummary)):
        if trainer_config.get(enabled) is not False and not any(isinstance(c, kind) for c in callbacks):
            defaults.append(default())
    return defaults


def main(args: ArgsType = None) -> None:
    """Entry point of ``lightning-ae`` and ``python -m lightning_ae``."""
    LightningAECLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        args=args,
    )
