"""Checks that let ``lightning-ae`` refuse bad input in one line, before any data is read.

Each check raises :class:`CLIInputError` with a message that names the bad thing; :func:`lightning_ae.cli.main`
prints it as ``lightning-ae: error: ...`` and exits with status 2 (``--debug`` or ``LIGHTNING_AE_DEBUG=1`` show
the traceback instead).
"""

from __future__ import annotations

import difflib
import functools
import importlib
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule

import lightning_ae
from lightning_ae.errors import InputError
from lightning_ae.pretrained import read_checkpoint

CKPT_KEYWORDS = ("last", "best", "hpc", "registry")
"""``--ckpt_path`` values that Lightning resolves itself."""


class CLIInputError(InputError):
    """Bad command-line input; the message is the one line the user sees."""


# ---- --model NAME / --data NAME ----------------------------------------------------------------------------------
def known_classes(base: type) -> list[str]:
    """Short names of the ``base`` subclasses that ``lightning_ae`` exports."""
    return sorted(name for name, obj in vars(lightning_ae).items()
                  if isinstance(obj, type) and issubclass(obj, base) and obj is not base)


def check_class_arguments(argv: Sequence[str]) -> None:
    """Raises :class:`CLIInputError` for a ``--model`` / ``--data`` value that names no class and no config file,
    with the known names and the closest ones."""
    for key, base, kind in (("--model", LightningModule, "model"), ("--data", LightningDataModule, "datamodule")):
        for value in _values_of(argv, key):
            if not _resolves(value):
                raise CLIInputError(_unknown_class_message(key, value, kind, known_classes(base)))


def _values_of(argv: Sequence[str], key: str) -> list[str]:
    values = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == key]
    return values + [arg.split("=", 1)[1] for arg in argv if arg.startswith(f"{key}=")]


def _resolves(value: str) -> bool:
    """A known short name, an importable ``module.Class``, an existing config file or inline JSON/YAML."""
    if value.lstrip().startswith(("{", "class_path")) or Path(value).is_file():
        return True
    if value in vars(lightning_ae):
        return True
    module, _, name = value.rpartition(".")
    if not module:
        return False
    try:
        return hasattr(importlib.import_module(module), name)
    except ImportError:
        return False


def _unknown_class_message(key: str, value: str, kind: str, known: list[str]) -> str:
    name = value.rpartition(".")[2]
    by_lower = {k.lower(): k for k in known}
    close = [by_lower[m] for m in difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.5)]
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return (f"{key} {value}: not a known {kind}, an importable class path or a config file. "
            f"Known: {', '.join(known)}{hint}")


# ---- --ckpt_path ---------------------------------------------------------------------------------------------------
def check_ckpt_path(ckpt_path: str | None, model_class_path: str | None) -> None:
    """Raises :class:`CLIInputError` unless ``ckpt_path`` is a Lightning checkpoint of ``model_class_path``.

    Lightning's keywords (``last``, ``best``...), remote URLs and directories (model folders) are left to others.
    The file is read with ``weights_only`` (memory-mapped): nothing in it runs.
    """
    if ckpt_path is None or _left_to_others(str(ckpt_path)):
        return
    path = Path(ckpt_path)
    if not path.exists():
        raise CLIInputError(f"--ckpt_path {ckpt_path}: no such file")
    checkpoint = _load_checkpoint(path)
    saved_class = checkpoint.get("hyper_parameters", {}).get("_class_path")
    if saved_class and model_class_path and saved_class != model_class_path:
        raise CLIInputError(f"--ckpt_path {ckpt_path} is a checkpoint of {saved_class}, but the model is "
                            f"{model_class_path}; use the matching config or --model {saved_class.rpartition('.')[2]}")


def _left_to_others(value: str) -> bool:
    return value in CKPT_KEYWORDS or value.startswith("registry:") or "://" in value or Path(value).is_dir()


def _load_checkpoint(path: Path) -> dict[str, Any]:
    if not zipfile.is_zipfile(path):
        raise CLIInputError(f"--ckpt_path {path} is not a Lightning checkpoint (not a file written by torch.save or "
                            "Trainer.save_checkpoint)")
    try:
        return read_checkpoint(path, "--ckpt_path", mmap=True)
    except ValueError as err:
        raise CLIInputError(str(err)) from err


# ---- value checks in the classes' __init__ --------------------------------------------------------------------
def instantiation_error(error: BaseException) -> CLIInputError | None:
    """One line for a ``ValueError``/``TypeError``/``FileNotFoundError`` raised while building the config's
    classes (jsonargparse wraps it), naming the class whose ``__init__`` refused its arguments; else ``None``."""
    root = _root_cause(error)
    if _union_error(str(root)) is not None or not isinstance(root, (ValueError, TypeError, FileNotFoundError,
                                                                    InputError)):
        for candidate in (root, error):  # jsonargparse reports an optional class argument's error as text only
            if (union := _union_error(str(candidate))) is not None:
                found = re.search(r"class_path='(?:[\w.]+\.)?(\w+)'", str(candidate))
                return CLIInputError(f"{found.group(1)}: {union}" if found else union)
        return None
    owner = _init_owner(root.__traceback__)
    message = " ".join(str(root).split())
    return CLIInputError(f"{owner}: {message}" if owner else message)


def _union_error(message: str) -> str | None:
    """The first real error of jsonargparse's "Does not validate against any of the Union subtypes" message (it
    lists one error per subtype as text, not as a cause: the one of the class that was being built comes first,
    ``Expected a <class 'NoneType'>`` for an optional argument after it)."""
    if "Does not validate against any of the Union subtypes" not in message:
        return None
    errors = [line.strip()[2:] for line in message.splitlines() if line.strip().startswith("- ")]
    real = [e for e in errors if not e.startswith("Expected a <class 'NoneType'>")]
    return " ".join(real[0].split()) if real else None


def _root_cause(error: BaseException) -> BaseException:
    seen = {id(error)}
    while (nxt := error.__cause__ or error.__context__) is not None and id(nxt) not in seen:
        seen.add(id(nxt))
        error = nxt
    return error


def _init_owner(tb: TracebackType | None) -> str | None:
    """The class of the first ``__init__`` on the traceback (the class being built)."""
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == "__init__" and "self" in frame.f_locals:
            return type(frame.f_locals["self"]).__name__
        tb = tb.tb_next
    return None


# ---- data hooks ------------------------------------------------------------------------------------------------
DATA_INPUT_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError)
"""Errors of a datamodule's ``prepare_data`` / ``setup`` that come from its input (paths, files, values)."""


def guard_data_hooks(datamodule: LightningDataModule) -> None:
    """Makes the ``prepare_data`` and ``setup`` of ``datamodule`` raise :class:`CLIInputError` (one line naming the
    datamodule) for a missing path, a bad file or a value they refuse; an :class:`InputError` (download, dataset
    file, image decode) passes through as it is. Wrapped with ``functools.wraps``: Lightning still sees the hooks
    as overridden."""
    for name in ("prepare_data", "setup"):
        hook = getattr(datamodule, name)

        @functools.wraps(hook)
        def guarded(*args: Any, _hook: Any = hook, **kwargs: Any) -> Any:
            try:
                return _hook(*args, **kwargs)
            except InputError:
                raise
            except DATA_INPUT_ERRORS as err:
                raise CLIInputError(f"{type(datamodule).__name__}: {' '.join(str(err).split())}") from err

        setattr(datamodule, name, guarded)


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line."""
    return " ".join(str(error).split()) or type(error).__name__
