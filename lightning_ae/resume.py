"""Random streams a training step draws from, saved in a checkpoint and restored on resume.

Every random choice of a training step (the DAE's corruption, the VAE's reparameterization, MNIST's dynamic
binarization, the CAE's random projections, the VQ-VAE's k-means seeds and restarts) comes from the global
generators of torch (CPU and CUDA), and possibly numpy and Python's ``random``. The models store their states in
every checkpoint (:func:`save_rng_states`) and, when a ``Trainer`` resumes fitting from it, set them back
(:func:`restore_rng_states`), so the resumed run draws exactly what the uninterrupted run drew. Together with the
data position (:class:`lightning_ae.data.resumable.ResumableDataLoader`) a run killed mid-epoch resumes to
bit-identical weights on a deterministic device.

The states are restored when the checkpoint is loaded; nothing the Trainer does between that and the first
training batch draws from these generators (the sanity check runs under Lightning's ``isolate_rng`` and the
training loader has its own generator).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.trainer.states import TrainerFn

RNG_KEY = "lightning_ae_rng_states"
"""Key of the generator states in a checkpoint dictionary."""


def rng_states() -> dict[str, Any]:
    """The states of the global generators: torch CPU, every CUDA device (if initialised), numpy, Python."""
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Sets the global generators to ``states`` (from :func:`rng_states`)."""
    torch.set_rng_state(states["torch"])
    _set_numpy_state(states["numpy"])
    random.setstate(_as_python_state(states["python"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _numpy_state() -> dict[str, Any]:
    """numpy's legacy global state as tensors and numbers (a ``weights_only`` checkpoint admits no arrays)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "gauss": float(gauss)}


def _set_numpy_state(state: dict[str, Any]) -> None:
    keys = state["keys"].numpy().astype(np.uint32)
    np.random.set_state((state["name"], keys, state["pos"], state["has_gauss"], state["gauss"]))


def _as_python_state(state: Any) -> tuple[Any, ...]:
    """``random.setstate`` wants tuples; a checkpoint may give lists back."""
    version, internal, gauss = state
    return version, tuple(internal), gauss


def save_rng_states(checkpoint: dict[str, Any]) -> None:
    """Stores the generator states in ``checkpoint`` (call from ``on_save_checkpoint``)."""
    checkpoint[RNG_KEY] = rng_states()


def restore_rng_states(module: LightningModule, checkpoint: dict[str, Any]) -> None:
    """Sets the generators back from ``checkpoint`` when ``module``'s Trainer resumes fitting from it.

    Call from ``on_load_checkpoint``. Nothing happens for ``load_from_checkpoint`` (no Trainer: loading a model
    must not change the caller's random state), for validate/test/predict, or for a checkpoint without states.
    """
    states = checkpoint.get(RNG_KEY)
    if states is None or not _resumes_fitting(module):
        return
    set_rng_states(states)


def _resumes_fitting(module: LightningModule) -> bool:
    try:
        trainer = module.trainer
    except RuntimeError:  # not attached to a Trainer
        return False
    return trainer is not None and trainer.state.fn == TrainerFn.FITTING
