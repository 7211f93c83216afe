"""The ``lightning-ae`` command: a LightningCLI with subclass mode for model and data.

``lightning-ae fit --config configs/mnist/ae.yaml``; ``--model VAE`` / ``--data CIFAR10DataModule`` pick classes
by short name; the datamodule's ``image_shape``, ``num_classes`` and ``pixel_range`` are linked into the model.
"""

from __future__ import annotations

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

import lightning_ae  # noqa: F401  (imports every model and datamodule so short class names resolve)


class LightningAECLI(LightningCLI):
    """LightningCLI that links the data's shape, class count and pixel range into the model."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for attr in ("image_shape", "num_classes", "pixel_range"):
            parser.link_arguments(f"data.{attr}", f"model.init_args.{attr}", apply_on="instantiate")


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
