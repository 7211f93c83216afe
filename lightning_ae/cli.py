"""The ``lightning-ae`` command: a LightningCLI with subclass mode for model and data.

``lightning-ae fit --config configs/mnist/ae.yaml``; ``--model VAE`` / ``--data CIFAR10DataModule`` pick classes
by short name; the datamodule's ``image_shape``, ``num_classes`` and ``pixel_range`` are linked into the model.
A Rich progress bar and model summary are added unless the config brings its own or disables them; ``predict``
writes its predictions to ``<log_dir>/predictions.pt`` (:class:`~lightning_ae.callbacks.PredictionWriter`).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import (
    BasePredictionWriter,
    ModelSummary,
    ProgressBar,
    RichModelSummary,
    RichProgressBar,
)
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

import lightning_ae  # noqa: F401  (imports every model and datamodule so short class names resolve)
from lightning_ae.callbacks.predictions import PredictionWriter
from lightning_ae.cli_checks import CLIInputError, check_ckpt_path, check_class_arguments, instantiation_error

DEBUG_ENV = "LIGHTNING_AE_DEBUG"
"""Set to 1 (or pass ``--debug``) to see the traceback of a refused input instead of one line."""


class LightningAECLI(LightningCLI):
    """LightningCLI that links the data's shape, class count and pixel range into the model."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for attr in ("image_shape", "num_classes", "pixel_range"):
            parser.link_arguments(f"data.{attr}", f"model.init_args.{attr}", apply_on="instantiate")

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parses, then checks ``--ckpt_path`` (before Lightning reads it, and before any data)."""
        super().parse_arguments(parser, args)
        check_parsed_ckpt_path(self.config)

    def instantiate_classes(self) -> None:
        """Builds the classes; a value an ``__init__`` refuses becomes one :class:`CLIInputError` line."""
        try:
            super().instantiate_classes()
        except (ValueError, TypeError, FileNotFoundError) as err:
            refused = instantiation_error(err)
            if refused is None:
                raise
            raise refused from err

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Adds :func:`rich_defaults` to the configured ``trainer.callbacks`` (which stay as they are)."""
        config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        callbacks = config.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
        defaults = rich_defaults(config, callbacks) + prediction_writer_default(self.subcommand, callbacks)
        return super().instantiate_trainer(**{**kwargs, "callbacks": callbacks + defaults})


def rich_defaults(trainer_config: dict[str, Any], callbacks: list[Callback]) -> list[Callback]:
    """A ``RichProgressBar`` and a ``RichModelSummary``, each unless disabled or already among ``callbacks``."""
    defaults: list[Callback] = []
    for enabled, kind, default in (("enable_progress_bar", ProgressBar, RichProgressBar),
                                   ("enable_model_summary", ModelSummary, RichModelSummary)):
        if trainer_config.get(enabled) is not False and not any(isinstance(c, kind) for c in callbacks):
            defaults.append(default())
    return defaults


def prediction_writer_default(subcommand: str | None, callbacks: list[Callback]) -> list[Callback]:
    """``[PredictionWriter()]`` for ``predict`` unless ``callbacks`` hold a prediction writer already."""
    if subcommand != "predict" or any(isinstance(c, BasePredictionWriter) for c in callbacks):
        return []
    return [PredictionWriter()]


def check_parsed_ckpt_path(config: Any) -> None:
    """:func:`check_ckpt_path` on the parsed config's subcommand (``--ckpt_path`` against ``model.class_path``)."""
    subcommand = config.get("subcommand")
    if not subcommand:
        return
    section = config[subcommand]
    model = section.get("model")
    check_ckpt_path(section.get("ckpt_path"), getattr(model, "class_path", None))


def main(args: ArgsType = None) -> None:
    """Entry point of ``lightning-ae`` and ``python -m lightning_ae``.

    Bad input (an unknown ``--model``/``--data`` name, a value a class refuses, a ``--ckpt_path`` that is not a
    checkpoint of the model) ends with one line on stderr and exit status 2; ``--debug`` or
    ``LIGHTNING_AE_DEBUG=1`` raise it with its traceback instead.
    """
    argv = list(sys.argv[1:] if args is None else args) if not isinstance(args, dict) else []
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    if "--debug" in argv:
        argv.remove("--debug")
        if args is None:
            sys.argv.remove("--debug")
        else:
            args = argv
    try:
        check_class_arguments(argv)
        run_cli(args)
    except CLIInputError as err:
        if debug:
            raise
        print(f"lightning-ae: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def run_cli(args: ArgsType = None) -> None:
    """Builds and runs :class:`LightningAECLI` with the package's settings."""
    LightningAECLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        args=args,
    )
