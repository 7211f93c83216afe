"""The ``lightning-ae`` command: a LightningCLI with subclass mode for model and data.

``lightning-ae fit --config configs/mnist/ae.yaml``; ``--model VAE`` / ``--data CIFAR10DataModule`` pick classes
by short name; the datamodule's ``image_shape``, ``num_classes`` and ``pixel_range`` are linked into the model.
A Rich progress bar and model summary are added unless the config brings its own or disables them; ``predict``
writes its predictions to ``<log_dir>/predictions.pt`` (:class:`~lightning_ae.callbacks.PredictionWriter`).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import (
    BasePredictionWriter,
    ModelSummary,
    ProgressBar,
    RichModelSummary,
    RichProgressBar,
)
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import MisconfigurationException

import lightning_ae  # noqa: F401  (imports every model and datamodule so short class names resolve)
from lightning_ae.callbacks.predictions import PredictionWriter
from lightning_ae.cli_checks import (
    CLIInputError,
    check_ckpt_path,
    check_class_arguments,
    guard_data_hooks,
    instantiation_error,
    one_line,
)
from lightning_ae.errors import InputError

DEBUG_ENV = "LIGHTNING_AE_DEBUG"
"""Set to 1 (or pass ``--debug``) to see the traceback of a refused input instead of one line."""


class LightningAECLI(LightningCLI):
    """LightningCLI that links the data's shape, class count and pixel range into the model."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for attr in ("image_shape", "num_classes", "pixel_range"):
            parser.link_arguments(f"data.{attr}", f"model.init_args.{attr}", apply_on="instantiate")
        add_save_pretrained_argument(parser)
        parser.add_argument("--overwrite", type=bool, default=False,
                            help="fit only: start a new run although the checkpoint folder of a ModelCheckpoint "
                                 "already holds checkpoints of an earlier run (they are overwritten)")

    def before_fit(self) -> None:
        """Refuses to start a new run over an earlier run's checkpoints (unless ``--overwrite``)."""
        section = self.config.fit
        if section.get("ckpt_path") is None and not section.get("overwrite") and self.trainer.is_global_zero:
            refuse_overwriting_checkpoints(self.trainer)

    def after_fit(self) -> None:
        save_pretrained_after_fit(self.trainer, self.model, self.config.fit.get("save_pretrained"))

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parses, then checks ``--ckpt_path`` (before Lightning reads it, and before any data)."""
        super().parse_arguments(parser, args)
        check_parsed_ckpt_path(self.config)
        read_checkpoints_safely(self.config)

    def instantiate_classes(self) -> None:
        """Builds the classes; a value an ``__init__`` refuses becomes one :class:`CLIInputError` line."""
        try:
            super().instantiate_classes()
        except MisconfigurationException as err:  # the Trainer refuses a combination of its arguments
            raise CLIInputError(f"trainer: {one_line(err)}") from err
        except (ValueError, TypeError, FileNotFoundError, InputError) as err:
            refused = instantiation_error(err)
            if refused is None:
                raise
            raise refused from err
        guard_data_hooks(self.datamodule)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Adds :func:`rich_defaults` to the configured ``trainer.callbacks`` (which stay as they are)."""
        section = self.config_init[self.subcommand] if self.subcommand else self.config_init
        config = {**(section.get("trainer") or {}), **kwargs}
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


def refuse_overwriting_checkpoints(trainer: Trainer) -> None:
    """Raises :class:`CLIInputError` when the folder of one of the trainer's ``ModelCheckpoint`` callbacks already
    holds ``.ckpt`` files: a new run would overwrite a trained model (the configs write ``best.ckpt`` and
    ``last.ckpt`` into a fixed folder). The message gives the three ways on: resume, another folder, overwrite."""
    for callback in trainer.checkpoint_callbacks:
        folder = getattr(callback, "dirpath", None)
        if not folder or not Path(folder).is_dir():
            continue
        existing = sorted(p.name for p in Path(folder).glob("*.ckpt"))
        if existing:
            raise CLIInputError(
                f"{folder} already holds {', '.join(existing)} of an earlier run, which this run would overwrite: "
                "resume it with --ckpt_path last, run from another working directory (or give the ModelCheckpoint "
                "another dirpath in the config), or pass --overwrite true")


def read_checkpoints_safely(config: Any) -> None:
    """Sets the subcommand's ``weights_only`` to ``True`` unless given: Lightning's default would unpickle a
    ``--ckpt_path`` (``last``, ``best`` or a path) without restriction, which runs any code in it."""
    subcommand = config.get("subcommand")
    if subcommand and "weights_only" in config[subcommand] and config[subcommand]["weights_only"] is None:
        config[subcommand]["weights_only"] = True


def check_parsed_ckpt_path(config: Any) -> None:
    """:func:`check_ckpt_path` on the parsed config's subcommand (``--ckpt_path`` against ``model.class_path``)."""
    subcommand = config.get("subcommand")
    if not subcommand:
        return
    section = config[subcommand]
    model = section.get("model")
    check_ckpt_path(section.get("ckpt_path"), getattr(model, "class_path", None))


# ---- shipping a trained model: export, model folders ----------------------------------------------------------
def add_save_pretrained_argument(parser: LightningArgumentParser) -> None:
    """``--save_pretrained DIR``: ``fit`` writes the trained model as a model folder (``save_pretrained``)."""
    parser.add_argument("--save_pretrained", type=str | None, default=None,
                        help="fit only: write the trained model to this folder (config.json + model.safetensors)")


def save_pretrained_after_fit(trainer: Trainer, model: LightningModule, directory: str | None) -> None:
    """Writes ``model`` as a model folder at the end of ``fit`` (on global rank zero) when ``directory`` is set."""
    if directory and trainer.is_global_zero:
        model.save_pretrained(directory)
        print(f"model folder written to {directory}")


@contextmanager
def resolve_model_source(args: Sequence[str]) -> Iterator[list[str]]:
    """The arguments with a model folder given as ``--ckpt_path DIR`` replaced by what LightningCLI reads: the
    folder's model config (``--model``, appended, so it overrides a config file's model) and a Lightning
    checkpoint of its weights, written to a temporary folder that lives while the command runs."""
    from lightning_ae.pretrained import folder_config, is_model_folder, load_pretrained

    args = list(args)
    index = next((i for i, a in enumerate(args) if a == "--ckpt_path" or a.startswith("--ckpt_path=")), None)
    if index is None:
        yield args
        return
    value_at = index if "=" in args[index] else index + 1
    folder = args[value_at].removeprefix("--ckpt_path=") if value_at < len(args) else ""
    if not folder or not is_model_folder(folder):
        yield args
        return
    if args[:1] == ["fit"]:
        raise CLIInputError(f"--ckpt_path {folder} is a model folder (weights, no optimizer state): fit resumes "
                            "from a training checkpoint (.ckpt, or last); to start a new run from the folder's "
                            f"model, give --model {Path(folder) / 'config.json'} and no --ckpt_path")
    import lightning

    try:  # the whole folder is checked here: its config, its classes, and that the weights fit the model
        model_config = folder_config(folder)
        weights = load_pretrained(folder).state_dict()
    except (ValueError, FileNotFoundError, OSError) as err:
        raise CLIInputError(f"--ckpt_path {folder}: {one_line(err)}") from err
    with tempfile.TemporaryDirectory(prefix="lightning-ae-") as tmp:
        config, ckpt = Path(tmp) / "model.json", Path(tmp) / "model.ckpt"
        config.write_text(json.dumps(model_config))
        state = {"state_dict": weights, "pytorch-lightning_version": lightning.__version__}
        torch.save(state, ckpt)
        args[index:value_at + 1] = ["--ckpt_path", str(ckpt)]
        yield [*args, "--model", str(config)]


def main(args: ArgsType = None) -> None:
    """Entry point of ``lightning-ae`` and ``python -m lightning_ae``.

    ``lightning-ae export ...`` exports a model (:func:`lightning_ae.export.export_main`), ``lightning-ae evaluate
    ...`` scores one (:func:`lightning_ae.evaluate.evaluate_main`); ``--ckpt_path`` takes a
    model folder too. Bad input (an unknown ``--model``/``--data`` name, a value a class refuses, a ``--ckpt_path``
    that is not a checkpoint of the model) ends with one line on stderr and exit status 2; ``--debug`` or
    ``LIGHTNING_AE_DEBUG=1`` raise it with its traceback instead.
    """
    from_argv = args is None
    if not from_argv and not isinstance(args, list | tuple):  # a dict or Namespace config: passed on as it is
        build_cli(args)
        return None
    argv = list(sys.argv[1:] if from_argv else args)
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    if argv[:1] == ["export"]:
        from lightning_ae.export import export_main

        return export_main(argv[1:], debug)
    if argv[:1] == ["evaluate"]:
        from lightning_ae.evaluate import evaluate_main

        return evaluate_main(argv[1:], debug)
    try:
        check_class_arguments(argv)
        with resolve_model_source(argv) as resolved:
            run_from(resolved, from_argv)
    except (InputError, FloatingPointError) as err:  # bad input (data, paths, values) or a diverged loss
        if debug:
            raise
        print(f"lightning-ae: error: {one_line(err)}", file=sys.stderr)
        raise SystemExit(2) from None
    return None


def run_from(args: list[str], from_argv: bool) -> None:
    """Runs the CLI on ``args``; from the command line through ``sys.argv`` (``args=`` would make LightningCLI
    warn)."""
    if not from_argv:
        build_cli(args)
        return
    saved, sys.argv = sys.argv, [sys.argv[0], *args]
    try:
        build_cli(None)
    finally:
        sys.argv = saved


def build_cli(args: ArgsType = None, run: bool = True) -> LightningAECLI:
    """The ``lightning-ae`` CLI on ``args``; with ``run=False`` it only builds the model, data and trainer."""
    return LightningAECLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )
