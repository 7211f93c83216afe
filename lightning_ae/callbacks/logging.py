"""The one place where images reach the loggers: W&B as ``wandb.Image``, TensorBoard as an image summary, and
every other logger (CSV) or no logger at all as PNG files under the run's log directory."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import imsave

from lightning_ae.callbacks.grid import to_rgb_uint8

ImageLike = torch.Tensor | np.ndarray | Figure


def new_figure(width: float = 6.0, height: float = 5.0, dpi: int = 100) -> Figure:
    """A matplotlib figure on the Agg canvas (no pyplot, no global state, no display needed)."""
    figure = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(figure)
    return figure


def figure_to_array(figure: Figure) -> np.ndarray:
    """Renders a figure to an ``(H, W, 3)`` uint8 array."""
    canvas = figure.canvas if isinstance(figure.canvas, FigureCanvasAgg) else FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def as_image_array(image: ImageLike) -> np.ndarray:
    """A figure, a ``(C, H, W)`` tensor in ``[0, 1]`` or an ``(H, W[, C])`` array -> ``(H, W, 3)`` uint8."""
    return figure_to_array(image) if isinstance(image, Figure) else to_rgb_uint8(image)


def write_png(path: Path, array: np.ndarray) -> Path:
    """Writes ``array`` ``(H, W, 3)`` uint8 as a PNG atomically (temporary file in the same folder, renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    try:
        with os.fdopen(fd, "wb") as fh:
            imsave(fh, array, format="png")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def png_path(log_dir: str | os.PathLike[str], key: str, step: int) -> Path:
    """Where the PNG of ``key`` at ``step`` goes: ``<log_dir>/images/<key, '/' -> '_'>/step_<step>.png``."""
    safe_key = re.sub(r"[^A-Za-z0-9_.-]+", "_", key).strip("_") or "image"
    return Path(log_dir) / "images" / safe_key / f"step_{step:07d}.png"


def _file_log_dir(trainer: Trainer, logger: Logger | None) -> str:
    """The logger's ``log_dir`` (or ``save_dir``), else ``default_root_dir``. Not ``trainer.log_dir``: under DDP
    it broadcasts, and this runs on rank zero only."""
    log_dir = getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None) if logger is not None else None
    return log_dir or trainer.default_root_dir


def log_image(trainer: Trainer, key: str, image: ImageLike, step: int | None = None) -> list[Path]:
    """Logs one image or figure to every logger of ``trainer``; call it on every rank, only rank zero writes.

    W&B gets a ``wandb.Image``, TensorBoard an image summary (``add_image``); any other logger (CSV...) and a
    trainer without loggers get a PNG under the log directory (:func:`png_path`), written atomically.

    Args:
        trainer: the trainer whose loggers receive the image.
        key: name of the image, e.g. ``"val/reconstructions"``.
        image: a matplotlib figure, a ``(C, H, W)`` tensor in ``[0, 1]`` or an ``(H, W[, 3])`` array.
        step: the step to log at (default: ``trainer.global_step``).

    Returns:
        The PNG files written (empty on other ranks and when every logger is W&B or TensorBoard).
    """
    if not trainer.is_global_zero:
        return []
    step = trainer.global_step if step is None else step
    array = as_image_array(image)
    written: list[Path] = []
    loggers: list[Logger | None] = list(trainer.loggers) or [None]
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[array], step=step)
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, array, global_step=step, dataformats="HWC")
        else:
            path = png_path(_file_log_dir(trainer, logger), key, step)
            if path not in written:
                written.append(write_png(path, array))
    return written
