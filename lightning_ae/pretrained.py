"""A model folder that describes itself: ``config.json`` (the constructor arguments, as ``class_path`` /
``init_args``) and ``model.safetensors`` (the weights). No pickled code, so a folder from someone else loads
safely: every ``class_path`` must name a class of ``lightning_ae``, ``torch.nn`` or ``torch.optim``.

    model.save_pretrained("my-vae")            # any variant, and PixelCNNPrior (with its VQ-VAE in my-vae/vqvae)
    VAE.from_pretrained("my-vae")              # or AutoencoderBase.from_pretrained / load_pretrained for any
    model.push_to_hub("me/my-vae")             # needs huggingface_hub and a login (huggingface-cli login)
    VAE.from_pretrained("me/my-vae")           # a Hub repo id: downloaded, then loaded like a folder

``config.json`` is also a model config for the command line (``--model my-vae/config.json``); the CLI takes the
folder itself wherever it takes a checkpoint for inference (``--ckpt_path my-vae``).

Constructor arguments are taken from the model's ``hparams``: a model built by ``lightning-ae fit`` (or loaded
from its checkpoint or a folder) holds every network as its ``class_path`` config, and a network or quantizer of
``lightning_ae`` passed to the constructor as a Python object is described by the arguments it was built with
(:mod:`lightning_ae.configurable`). Only a module of a class outside ``lightning_ae`` cannot be described without
code; saving it is an error naming the class.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import json
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import instantiate_module
from torch import nn

from lightning_ae.configurable import is_library_part, part_config

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
ALLOWED_PACKAGES = ("lightning_ae", "torch.nn", "torch.optim")
INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"  # what LightningCLI records; load_from_checkpoint uses it
_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")
_REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")

M = TypeVar("M", bound=LightningModule)


# ---- model -> config -----------------------------------------------------------------------------------------
def class_path_of(cls: type) -> str:
    """``module.QualName`` of a class."""
    return f"{cls.__module__}.{cls.__qualname__}"


def config_value(value: Any, name: str) -> Any:
    """A constructor argument as JSON: classes and ``functools.partial`` of classes as ``class_path`` dicts.

    Raises:
        ValueError: for an ``nn.Module`` given as a Python object, or another value JSON cannot hold.
    """
    if isinstance(value, nn.Module):
        if not is_library_part(value):
            cls = type(value)
            raise ValueError(
                f"{name} is a {cls.__module__}.{cls.__qualname__}, a class outside lightning_ae that a model folder "
                "cannot describe without code: use lightning_ae's networks and quantizers, or save the weights "
                "yourself (torch.save(model.state_dict()))")
        return part_config(value)
    if isinstance(value, type):
        return {"class_path": class_path_of(value)}
    if isinstance(value, functools.partial) and isinstance(value.func, type) and not value.args:
        return {"class_path": class_path_of(value.func), "init_args": config_value(value.keywords, name)}
    if isinstance(value, tuple | list):
        return [config_value(v, f"{name}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {str(k): config_value(v, f"{name}.{k}") for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise ValueError(f"{name} is a {type(value).__name__}, which config.json cannot hold")


def model_config(model: LightningModule) -> dict[str, Any]:
    """``{"class_path", "init_args"}`` of ``model`` from its ``hparams`` (see the module docstring)."""
    hparams = dict(model.hparams)
    class_path = hparams.pop("_class_path", None) or class_path_of(type(model))
    hparams.pop("_instantiator", None)
    return {"class_path": class_path, "init_args": config_value(hparams, "init_args")}


def describe_parts(model: LightningModule) -> None:
    """Replaces the networks and quantizers of ``lightning_ae`` given to ``model``'s constructor as Python objects
    by their configs in ``model.hparams`` (with Lightning's CLI instantiator, which rebuilds them): its checkpoints
    then hold plain values only, load with ``weights_only=True``, and ``load_from_checkpoint`` rebuilds the parts.
    Left as they are when a module of another class is among them (such a model's checkpoint pickles it)."""
    modules = {k: v for k, v in model.hparams.items() if isinstance(v, nn.Module)}
    if not modules or not all(is_library_part(v) for v in modules.values()):
        return
    for name, module in modules.items():
        model.hparams[name] = part_config(module)
    model.hparams.setdefault("_class_path", class_path_of(type(model)))
    model.hparams["_instantiator"] = INSTANTIATOR


# ---- config -> model (checked first) -------------------------------------------------------------------------
def _allowed(class_path: str) -> bool:
    return any(class_path == p or class_path.startswith(p + ".") for p in ALLOWED_PACKAGES)


def _names_code(text: str) -> bool:
    """Whether a string looks like an import path of an installed package (``os.system``), not e.g. a file."""
    if not _DOTTED.fullmatch(text):
        return False
    return importlib.util.find_spec(text.split(".")[0]) is not None


def check_config(value: Any, where: str = "config") -> None:
    """Refuses a config that names code outside ``lightning_ae``, ``torch.nn`` and ``torch.optim``: any
    ``class_path``, and any string that is an import path of an installed package.

    Raises:
        ValueError: naming the place in the config and the refused name.
    """
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "class_path" and not (isinstance(item, str) and _allowed(item)):
                raise ValueError(f"{where}.class_path {item!r} is refused: a model folder may only name classes of "
                                 f"{', '.join(ALLOWED_PACKAGES)}")
            check_config(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_config(item, f"{where}[{i}]")
    elif isinstance(value, str) and _names_code(value) and not _allowed(value):
        raise ValueError(f"{where} {value!r} names code outside {', '.join(ALLOWED_PACKAGES)} and is refused")


def resolve_class(class_path: str, base: type = LightningModule) -> type:
    """The class ``class_path`` names, after checking that it is allowed and a subclass of ``base``."""
    check_config({"class_path": class_path})
    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        raise ValueError(f"class_path {class_path!r} does not name a class") from None
    if not (inspect.isclass(cls) and issubclass(cls, base)):
        raise ValueError(f"class_path {class_path!r} is not a {base.__name__}")
    return cls


def constructor_defaults(cls: type) -> dict[str, Any]:
    """The defaults of ``cls``'s constructor arguments as config values, the subclass's first (up the MRO, so that
    arguments a subclass forwards with ``**kwargs`` are included)."""
    defaults: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if "__init__" not in vars(klass) or not issubclass(klass, LightningModule):
            continue
        for name, param in inspect.signature(klass.__init__).parameters.items():
            if param.default is not inspect.Parameter.empty:
                defaults[name] = config_value(param.default, name)
    return defaults


def from_config(config: dict[str, Any], base: type[M] = LightningModule) -> M:  # type: ignore[assignment]
    """Builds the model a ``{"class_path", "init_args"}`` config describes (checked by :func:`check_config`), with
    nested ``class_path``\\s instantiated as ``lightning-ae fit`` does; its ``hparams`` keep the config, so its
    Lightning checkpoints and folders describe it in turn."""
    if not isinstance(config, dict) or set(config) - {"class_path", "init_args"} or "class_path" not in config:
        raise ValueError(f"a model config is {{'class_path': ..., 'init_args': {{...}}}}, got {config!r:.200}")
    check_config(config)
    cls = resolve_class(config["class_path"], base)
    init_args = {**constructor_defaults(cls), **(config.get("init_args") or {})}
    model = instantiate_module(cls, {"_class_path": config["class_path"], **init_args})
    model.hparams.clear()  # built inside LightningCLI (a prior's frozen model), it would hold the outer model's too
    model.hparams.update({"_class_path": config["class_path"], **init_args, "_instantiator": INSTANTIATOR})
    return model


# ---- folders ---------------------------------------------------------------------------------------------------
def _write_atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def _require(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"model folders need {module.split('.')[0]}: pip install 'lightning-ae[hub]'") from None


def save_pretrained(model: LightningModule, directory: str | Path) -> Path:
    """Writes ``config.json`` and ``model.safetensors`` of ``model`` into ``directory`` (and, for each entry of
    ``model.pretrained_submodels``, the submodel's own folder); returns the folder.

    Raises:
        ValueError: when a constructor argument cannot be described (see :func:`config_value`).
    """
    safetensors_torch = _require("safetensors.torch")
    directory = Path(directory)
    config = model_config(model)  # before writing anything: an undescribable model leaves no folder behind
    directory.mkdir(parents=True, exist_ok=True)
    for arg, attribute in getattr(model, "pretrained_submodels", {}).items():
        save_pretrained(getattr(model, attribute), directory / attribute)
        config["init_args"][arg] = attribute  # relative: the folder can move
    for arg in getattr(model, "pretrained_derived", ()):  # rebuilt from the submodel folders when loading
        config["init_args"].pop(arg, None)
    from lightning_ae import __version__

    metadata = {"format": "pt", "lightning_ae_version": __version__}
    _write_atomic(directory / WEIGHTS_NAME, lambda p: safetensors_torch.save_model(model, str(p), metadata))
    _write_atomic(directory / CONFIG_NAME, lambda p: p.write_text(json.dumps(config, indent=2) + "\n"))
    return directory


def local_folder(source: str | Path, revision: str | None = None) -> Path:
    """A local model folder for ``source``: the folder itself, or a Hub repo id (``owner/name``) downloaded."""
    path = Path(source)
    if path.is_dir():
        if not (path / CONFIG_NAME).is_file() or not (path / WEIGHTS_NAME).is_file():
            raise FileNotFoundError(f"{source} is not a model folder: it needs {CONFIG_NAME} and {WEIGHTS_NAME} "
                                    "(written by save_pretrained)")
        return path
    if path.exists() or not _REPO_ID.fullmatch(str(source)):
        raise FileNotFoundError(f"{source} is neither a model folder nor a Hugging Face Hub repo id (owner/name)")
    hub = _require("huggingface_hub")
    return Path(hub.snapshot_download(repo_id=str(source), revision=revision,
                                      allow_patterns=["*.json", "*.safetensors", "*.md"]))


def folder_config(folder: str | Path, base: type = LightningModule) -> dict[str, Any]:
    """The checked ``config.json`` of a model folder, with the paths of its submodel folders made absolute.

    Raises:
        ValueError: for a config naming a class outside the allowed packages, or not a ``base``.
    """
    folder = Path(folder)
    config = read_config(folder / CONFIG_NAME)
    check_config(config, str(folder / CONFIG_NAME))
    cls = resolve_class(config.get("class_path", ""), base)
    for arg, attribute in getattr(cls, "pretrained_submodels", {}).items():
        sub = folder / attribute
        if not is_model_folder(sub):  # a plain file here would be read as a checkpoint: refused, whatever it is
            raise ValueError(f"{sub} must be a model folder ({CONFIG_NAME} + {WEIGHTS_NAME}) holding the "
                             f"{attribute} of {folder}; it is {'a file' if sub.exists() else 'missing'}")
        config["init_args"][arg] = str(sub.resolve())
    return config


def read_config(path: Path) -> dict[str, Any]:
    """The JSON object of a model folder's ``config.json``.

    Raises:
        FileNotFoundError: for a missing file. ValueError: for broken JSON or another JSON value, naming the path.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: not a model folder")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(config, dict) or not isinstance(config.get("init_args", {}), dict):
        raise ValueError(f"{path} must hold {{'class_path': ..., 'init_args': {{...}}}}")
    return config


def load_pretrained(
    source: str | Path, base: type[M] = LightningModule, map_location: Any = None, revision: str | None = None,  # type: ignore[assignment]
) -> M:
    """Loads the model of a folder written by :func:`save_pretrained` (or a Hub repo id), in eval mode.

    Args:
        source: the folder, or ``owner/name`` of a Hugging Face Hub repo.
        base: the class the folder's model must be (a subclass of).
        map_location: device to move the model to (default: CPU).
        revision: Hub revision (branch, tag or commit).

    Raises:
        ValueError: for a config naming a class outside the allowed packages, or not a ``base``.
        FileNotFoundError: for a missing folder or file.
    """
    folder = local_folder(source, revision)
    model = from_config(folder_config(folder, base), base)
    load_weights(model, folder / WEIGHTS_NAME)
    return model.to(map_location or "cpu").eval()


def state_dict_mismatch(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]) -> str | None:
    """What keeps the tensors ``given`` from loading where ``expected`` are (missing or unexpected names, or the
    first of the tensors whose shapes differ), as one line; ``None`` when they fit."""
    missing, unexpected = sorted(set(expected) - set(given)), sorted(set(given) - set(expected))
    if missing or unexpected:
        return f"{len(missing)} missing tensors {missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}"
    bad = [k for k in expected if tuple(expected[k].shape) != tuple(given[k].shape)]
    if bad:
        return (f"{bad[0]} is {tuple(given[bad[0]].shape)}, expected {tuple(expected[bad[0]].shape)} ({len(bad)} "
                "such tensors)")
    return None


def load_weights(model: nn.Module, path: Path) -> None:
    """Loads ``model.safetensors`` into ``model`` (strict).

    Raises:
        ValueError: naming the file, when it is corrupt or its tensors do not fit the model its ``config.json``
            describes (an edited config: missing, unexpected or differently shaped weights).
    """
    try:
        _require("safetensors.torch").load_model(model, str(path), strict=True)
    except RuntimeError as err:  # safetensors' and load_state_dict's errors: keep the first line, no traceback
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = " ".join(lines[:2])[:300]
        raise ValueError(f"{path} does not match the model its config.json describes: {detail}") from None
    except Exception as err:  # safetensors raises its own SafetensorError for a truncated or corrupt file
        raise ValueError(f"{path} is not a readable safetensors file ({err})") from None


class PretrainedMixin:
    """``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` for a LightningModule (see the module docstring).

    Attributes:
        pretrained_submodels: constructor arguments that name another model's checkpoint, mapped to the attribute
            holding that model: it is saved as its own folder inside the folder (``PixelCNNPrior``: its VQ-VAE).
        pretrained_derived: constructor arguments left out of the folder's config because the submodel folders
            give them (``PixelCNNPrior``: ``vqvae_hparams``).
    """

    pretrained_submodels: ClassVar[dict[str, str]] = {}
    pretrained_derived: ClassVar[tuple[str, ...]] = ()

    def save_pretrained(self, directory: str | Path) -> Path:
        """Writes ``config.json`` and ``model.safetensors`` into ``directory``; returns it."""
        return save_pretrained(self, directory)  # type: ignore[arg-type]

    @classmethod
    def from_pretrained(cls: type[M], source: str | Path, map_location: Any = None, revision: str | None = None) -> M:
        """The model of a folder (or Hub repo id) written by :meth:`save_pretrained`; it must be a ``cls``."""
        return load_pretrained(source, cls, map_location, revision)

    def push_to_hub(self, repo_id: str, private: bool | None = None, token: str | None = None,
                    commit_message: str = "Upload lightning-ae model") -> str:
        """Saves the model folder and uploads it to the Hugging Face Hub repo ``repo_id`` (created if needed);
        returns the commit URL. Needs ``huggingface_hub`` and a token (``huggingface-cli login``)."""
        import tempfile

        hub = _require("huggingface_hub")
        api = hub.HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp)
            return str(api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message))


# ---- any model source: a folder or a checkpoint ------------------------------------------------------------------
def is_model_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding ``config.json`` (a folder written by ``save_pretrained``)."""
    return (Path(path) / CONFIG_NAME).is_file()


def read_checkpoint(path: str | Path, what: str = "checkpoint", mmap: bool = False) -> dict[str, Any]:
    """A Lightning checkpoint file read safely: ``torch.load(weights_only=True)`` (plain tensors and containers,
    and the allow-listed torch optimizer classes; a pickle that would import anything else is refused before any of
    it runs). ``mmap``: map the file instead of reading it (a file ``torch.save`` wrote).

    Raises:
        ValueError: naming ``what`` and the path, for a file that is not a checkpoint, is corrupt, holds an object
            safe loading refuses, or has no ``state_dict``.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        refused = f"global {found.group(1)}" if found else "content outside the allowed types"
        raise ValueError(f"{what} {path} holds an object that safe loading refuses ({refused}): it was not written "
                         "by lightning-ae, and is not loaded") from None
    except (RuntimeError, OSError, EOFError) as err:
        raise ValueError(f"{what} {path} is not a readable checkpoint ({str(err).splitlines()[0]})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{what} {path} is not a Lightning checkpoint (it holds no state_dict)")
    return checkpoint


def load_model(source: str | Path, model_class: str | None = None) -> LightningModule:
    """The model of a model folder or a Lightning checkpoint, on the CPU, in eval mode.

    A checkpoint written by ``lightning-ae fit`` names its class; another needs ``model_class`` (a class name of
    ``lightning_ae``, e.g. ``VAE``, or a class path).

    Raises:
        FileNotFoundError: for a path that does not exist.
        ValueError: for a checkpoint that names no class and no ``model_class``, or a refused class.
    """
    if is_model_folder(source):
        return load_pretrained(source)
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"{source} is neither a checkpoint file nor a model folder ({CONFIG_NAME} + "
                                f"{WEIGHTS_NAME})")
    hparams = read_checkpoint(path).get("hyper_parameters") or {}
    class_path = hparams.get("_class_path") or model_class
    if class_path is None:
        raise ValueError(f"{source} names no model class (it was not written by lightning-ae fit): give one, "
                         "e.g. --model VAE")
    class_path = class_path if "." in class_path else f"lightning_ae.{class_path}"
    return resolve_class(class_path).load_from_checkpoint(path, map_location="cpu", weights_only=True).eval()
