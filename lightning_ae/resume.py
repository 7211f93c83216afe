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

Under DDP every rank has its own streams (its own corruption noise, reparameterization samples...): the checkpoint
holds the states of every rank (gathered when it is saved, which Lightning does on every rank), and each rank sets
back its own, the accelerator's state being that of the rank's current device. A run resumed on another number of
ranks cannot continue the streams: it warns, and every rank re-seeds its generators from rank 0's stream and its
rank (different on every rank, repeatable).
"""

from __future__ import annotations

import random
import warnings
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.trainer.states import TrainerFn

RNG_KEY = "lightning_ae_rng_states"
"""Key of the generator states in a checkpoint dictionary."""


def rng_states() -> dict[str, Any]:
    """The states of this process's global generators: torch CPU, the current CUDA device (if initialised), numpy,
    Python."""
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Sets this process's global generators to ``states`` (from :func:`rng_states`)."""
    torch.set_rng_state(states["torch"])
    _set_numpy_state(states["numpy"])
    random.setstate(_as_python_state(states["python"]))
    cuda = states.get("cuda")
    if isinstance(cuda, torch.Tensor) and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda)


def _distributed() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised default process group, else ``(0, 1)``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def all_rank_states() -> dict[str, Any]:
    """``{"world_size": W, "ranks": [states of rank 0, ..., W - 1]}``: a collective under DDP (every rank calls
    it, as every rank saves a checkpoint)."""
    world_size = _distributed()[1]
    states = rng_states()
    if world_size == 1:
        return {"world_size": 1, "ranks": [states]}
    gathered: list[Any] = [None] * world_size
    torch.distributed.all_gather_object(gathered, {k: _to_cpu(v) for k, v in states.items()})
    return {"world_size": world_size, "ranks": gathered}


def _to_cpu(value: Any) -> Any:
    return value.cpu() if isinstance(value, torch.Tensor) else value


def restore_rank_states(saved: dict[str, Any], rank: int, world_size: int) -> None:
    """Sets this rank's generators from ``saved`` (:func:`all_rank_states`, or the single states dict of older
    checkpoints): its own states when the world size is the saved one, else a warning and a per-rank re-seed."""
    if "ranks" not in saved:  # written before per-rank states: rank 0's only
        saved = {"world_size": 1, "ranks": [saved]}
    if saved["world_size"] == world_size:
        set_rng_states(saved["ranks"][rank])
        return
    warnings.warn(f"the checkpoint holds the random streams of {saved['world_size']} rank(s) and this run has "
                  f"{world_size}: the streams cannot continue, so every rank re-seeds its generators from rank 0's "
                  "stream and its rank (the run is repeatable, but not identical to an uninterrupted one)",
                  stacklevel=2)
    set_rng_states(saved["ranks"][0])
    seed = int(torch.randint(0, 2**31 - 1, (1,)).item()) + rank  # the same base on every rank, then its own
    torch.manual_seed(seed)  # every device
    np.random.seed(seed % 2**32)
    random.seed(seed)


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
    """Stores the generator states of every rank in ``checkpoint`` (call from ``on_save_checkpoint``, which
    Lightning runs on every rank)."""
    checkpoint[RNG_KEY] = all_rank_states()


def restore_rng_states(module: LightningModule, checkpoint: dict[str, Any]) -> None:
    """Sets the generators back from ``checkpoint`` when ``module``'s Trainer resumes fitting from it.

    Call from ``on_load_checkpoint``. Nothing happens for ``load_from_checkpoint`` (no Trainer: loading a model
    must not change the caller's random state), for validate/test/predict, or for a checkpoint without states.
    """
    states = checkpoint.get(RNG_KEY)
    if states is None or not _resumes_fitting(module):
        return
    restore_rank_states(states, *_distributed())


def _resumes_fitting(module: LightningModule) -> bool:
    try:
        trainer = module.trainer
    except RuntimeError:  # not attached to a Trainer
        return False
    return trainer is not None and trainer.state.fn == TrainerFn.FITTING
