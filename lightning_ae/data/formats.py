"""Readers for the two on-disk formats, validating as they go.

* IDX (MNIST, Fashion-MNIST): http://yann.lecun.com/exdb/mnist/ — a magic number ``00 00 08 <ndim>``,
  ``ndim`` big-endian int32 dimensions, then the unsigned bytes. Read raw or gzip-compressed.
* CIFAR-10 python batches: pickled dicts written by Python 2. They are loaded with
  :class:`RestrictedUnpickler`, which admits only the numpy reconstruction functions the format needs, so a
  pickle that tries to import anything else (``os.system``, ``builtins.eval``...) is refused before it runs.

Every problem is a :class:`DatasetFileError` that names the file and says what to do.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import pickle
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightning_ae.errors import InputError

_FIX = "Delete it and let prepare_data() download it again (download=True), or put the official file there."


class DatasetFileError(InputError, RuntimeError):
    """A dataset file is missing, truncated, corrupt or of the wrong format."""


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (EOFError, OSError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise DatasetFileError(f"{path}: cannot be read ({err}); the file is truncated or corrupt. {_FIX}") from err


def read_idx(path: str | os.PathLike[str], ndim: int, item_shape: tuple[int, ...] = ()) -> torch.Tensor:
    """Reads an IDX file of unsigned bytes into a uint8 tensor, checking magic, dimensions and length.

    Args:
        path: the file (``.gz`` is decompressed in memory).
        ndim: the expected number of dimensions (3 for images, 1 for labels).
        item_shape: the expected trailing dimensions (``(28, 28)`` for MNIST images).
    """
    path = Path(path)
    raw = _read_bytes(path)
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetFileError(f"{path}: {len(raw)} bytes is shorter than an IDX header. {_FIX}")
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] != ndim:
        raise DatasetFileError(
            f"{path}: bad IDX magic {raw[:4].hex()} (expected 000008{ndim:02x}: unsigned bytes, {ndim} dims). {_FIX}"
        )
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if dims[1:] != tuple(item_shape):
        raise DatasetFileError(f"{path}: items have shape {dims[1:]}, expected {tuple(item_shape)}. {_FIX}")
    expected = header + math.prod(dims)
    if len(raw) != expected:
        raise DatasetFileError(
            f"{path}: {len(raw)} bytes, expected {expected} for dimensions {dims} (truncated or padded). {_FIX}"
        )
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).view(*dims)


class ForbiddenGlobalError(pickle.UnpicklingError):
    """A pickle asked for a global outside the allow-list."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals a CIFAR batch (dicts, lists, numpy arrays) needs."""

    ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise ForbiddenGlobalError(f"global {module}.{name} is not allowed in a CIFAR batch")
        if module == "numpy.core.multiarray":
            module = "numpy._core.multiarray"  # numpy >= 2 name of the same function
        return super().find_class(module, name)


def load_restricted_pickle(path: str | os.PathLike[str]) -> Any:
    """Loads a pickle with :class:`RestrictedUnpickler` (``encoding='bytes'``, as Python 2 files need)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DatasetFileError(f"{path}: cannot be read ({err}). {_FIX}") from err
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except ForbiddenGlobalError as err:
        raise DatasetFileError(f"{path}: refused pickle ({err}); it may try to run code. {_FIX}") from err
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as err:
        raise DatasetFileError(f"{path}: truncated or corrupt pickle ({type(err).__name__}: {err}). {_FIX}") from err


def _str_keys(obj: Any, path: Path) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise DatasetFileError(f"{path}: expected a dict, found {type(obj).__name__}. {_FIX}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def read_cifar_batch(path: str | os.PathLike[str], num_classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Reads one CIFAR python batch into ``(images uint8 (N, 3, 32, 32), labels int64 (N,))``."""
    path = Path(path)
    batch = _str_keys(load_restricted_pickle(path), path)
    missing = {"data", "labels"} - batch.keys()
    if missing:
        raise DatasetFileError(f"{path}: missing keys {sorted(missing)}; not a CIFAR batch. {_FIX}")
    data, labels = batch["data"], batch["labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise DatasetFileError(f"{path}: 'data' must be a uint8 array of shape (N, 3072), got {shape}. {_FIX}")
    labels_t = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    if labels_t.shape != (data.shape[0],):
        raise DatasetFileError(f"{path}: {labels_t.numel()} labels for {data.shape[0]} images. {_FIX}")
    if labels_t.numel() and (labels_t.min() < 0 or labels_t.max() >= num_classes):
        raise DatasetFileError(f"{path}: labels outside [0, {num_classes}). {_FIX}")
    return torch.from_numpy(data.copy()).view(-1, 3, 32, 32), labels_t


def read_cifar_meta(path: str | os.PathLike[str], key: str = "label_names") -> list[str]:
    """Reads the class names from ``batches.meta``."""
    path = Path(path)
    meta = _str_keys(load_restricted_pickle(path), path)
    if key not in meta:
        raise DatasetFileError(f"{path}: no {key!r} entry; not a CIFAR meta file. {_FIX}")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in meta[key]]
