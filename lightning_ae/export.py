"""Export a trained model's encoder and decoder as two graphs, ONNX or TorchScript, with a JSON sidecar.

Per variant (chosen by the methods the model exposes, not by its class):

* a VQ-VAE (``encode_indices`` / ``decode_indices``): ``encoder`` images -> code indices (int64), ``decoder``
  code indices -> images;
* a VAE (``posterior``): ``encoder`` images -> ``mean`` and ``logvar`` of ``q(z|x)``, ``decoder`` z -> images;
* every other autoencoder: ``encoder`` images -> codes (``model.encode``: sparse codes for a sparse
  autoencoder), ``decoder`` codes -> images.

Decoder outputs are images in the model's ``pixel_range`` (``output_to_image``: sigmoid of Bernoulli logits,
the mean of a Gaussian). The batch dimension is dynamic. ``export.json`` beside the graphs names every input
and output with its shape (``"batch"`` for the dynamic one), dtype, the pixel range and the image shape.

Every export is verified before it is kept: the written graphs are run (onnxruntime / ``torch.jit.load``) on a
batch of another size than the one traced and compared with the PyTorch model (max abs difference <= ``atol``;
integer outputs must be equal). Files are written under temporary names and renamed.

    lightning-ae export --ckpt_path model.ckpt --format onnx --out exported/
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

Format = Literal["onnx", "torchscript"]
FORMATS: tuple[str, ...] = ("onnx", "torchscript")
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}
SIDECAR = "export.json"
TRACE_BATCH, VERIFY_BATCH = 2, 3


class ExportError(RuntimeError):
    """A model, or one of its networks, that cannot be exported or whose export does not match the model."""


@dataclass
class Graph:
    """One exported graph: ``forward`` maps ``example`` (a batch of ``TRACE_BATCH``) to ``output_names``.

    Attributes:
        name: ``encoder`` or ``decoder``; the file is ``<name>.onnx`` / ``<name>.pt``.
        module: the module to trace.
        example: an example input; ``make_input(n)`` gives one of batch ``n``.
        input_name: name of the input.
        output_names: names of the outputs (one or several tensors).
    """

    name: str
    module: nn.Module
    make_input: Callable[[int], torch.Tensor]
    input_name: str
    output_names: tuple[str, ...]


class _Function(nn.Module):
    """Wraps a function of ``owner`` (e.g. ``model.encode_indices``) as a module to trace; the children of
    ``owner`` are held as submodules so that its parameters and buffers are in the graph (the LightningModule itself
    is not: tracing reads its attributes, and some of them need a Trainer)."""

    def __init__(self, owner: nn.Module, function: Callable[[torch.Tensor], Any]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(owner.children())
        self.function = function

    def forward(self, x: torch.Tensor) -> Any:
        return self.function(x)


def _random_images(model: nn.Module) -> Callable[[int], torch.Tensor]:
    low, high = model.pixel_range
    return lambda n: torch.rand(n, *model.image_shape, device=model.device) * (high - low) + low


def _latent_shape(model: nn.Module, encode: Callable[[torch.Tensor], torch.Tensor]) -> tuple[int, ...]:
    with torch.no_grad():
        return tuple(encode(_random_images(model)(1)).shape[1:])


def _vae_encoder(model: nn.Module) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    def encode(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = model.posterior(x)
        return q.mean, q.logvar

    return encode


def _codes_graphs(model: nn.Module) -> list[Graph]:
    """Encoder images -> codes (or the VAE's mean and log-variance) and decoder codes -> images."""
    vae = hasattr(model, "posterior")
    encode = _vae_encoder(model) if vae else model.encode
    shape = _latent_shape(model, model.encode)

    def decode(z: torch.Tensor) -> torch.Tensor:
        return model.output_to_image(model.decode(z))

    return [
        Graph("encoder", _Function(model, encode), _random_images(model), "images",
              ("mean", "logvar") if vae else ("codes",)),
        Graph("decoder", _Function(model, decode), lambda n: torch.randn(n, *shape, device=model.device), "codes",
              ("images",)),
    ]


def _indices_graphs(model: nn.Module) -> list[Graph]:
    """VQ-VAE: encoder images -> code indices, decoder code indices -> images."""
    encode = model.encode_indices
    grid = _latent_shape(model, encode)
    num_codes = model.quantizer.num_codes

    def indices(n: int) -> torch.Tensor:
        return torch.randint(num_codes, (n, *grid), device=model.device)

    return [
        Graph("encoder", _Function(model, encode), _random_images(model), "images", ("indices",)),
        Graph("decoder", _Function(model, model.decode_indices), indices, "indices", ("images",)),
    ]


def export_graphs(model: nn.Module) -> list[Graph]:
    """The encoder and decoder graphs of ``model`` (see the module docstring for what each variant exports).

    Raises:
        ExportError: for a model that is not an autoencoder (e.g. :class:`PixelCNNPrior`: export its ``vqvae``).
    """
    if hasattr(model, "vqvae") and not hasattr(model, "encode"):
        raise ExportError(f"{type(model).__name__} samples autoregressively and is not exported; export its "
                          "VQ-VAE (model.vqvae) and sample code grids in Python")
    missing = [m for m in ("encode", "decode", "output_to_image", "image_shape", "pixel_range")
               if not hasattr(model, m)]
    if missing:
        raise ExportError(f"{type(model).__name__} is not an autoencoder of lightning_ae: it lacks {missing}")
    return _indices_graphs(model) if hasattr(model, "decode_indices") else _codes_graphs(model)


# ---- writing ---------------------------------------------------------------------------------------------------
def _require_onnx() -> Any:
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError as err:
        raise ImportError(f"ONNX export needs the packages onnx and onnxruntime ({err.name} is missing): "
                          "pip install 'lightning-ae[export]'") from None
    return onnxruntime


_OPERATOR = re.compile(r"\b(?:aten|prim|onnx)::\w+")


def _export_error(graph: Graph, model: nn.Module, fmt: str, err: Exception) -> ExportError:
    """An error naming the graph, the network and the unsupported operation (first line of the exporter's)."""
    message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    match = _OPERATOR.search(str(err))
    operation = f" (operation {match.group(0)!r})" if match else ""
    network = type(getattr(model, graph.name, model)).__name__
    return ExportError(f"cannot export the {graph.name} of {type(model).__name__} ({network}) to {fmt}"
                       f"{operation}: {message}")


def _write_onnx(graph: Graph, path: Path, opset: int) -> None:
    names = [graph.input_name, *graph.output_names]
    torch.onnx.export(
        graph.module, (graph.make_input(TRACE_BATCH),), str(path), dynamo=False, opset_version=opset,
        input_names=[graph.input_name], output_names=list(graph.output_names),
        dynamic_axes={name: {0: "batch"} for name in names},
    )


def _write_torchscript(graph: Graph, path: Path) -> None:
    traced = torch.jit.trace(graph.module, (graph.make_input(TRACE_BATCH),), check_trace=False)
    torch.jit.save(traced, str(path))


@contextmanager
def _quiet_deprecations() -> Iterator[None]:
    """Silences torch's deprecation notices of ``torch.jit`` and the TorchScript-based ONNX exporter: they are the
    paths that export these models offline (the dynamo exporter needs onnxscript), and every export is verified."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.(jit|onnx)")
        yield


def _write_graph(graph: Graph, model: nn.Module, fmt: str, path: Path, opset: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with _quiet_deprecations():
            if fmt == "onnx":
                _write_onnx(graph, tmp, opset)
            else:
                _write_torchscript(graph, tmp)
    except Exception as err:  # the exporters raise many types; one line naming the operation replaces them
        tmp.unlink(missing_ok=True)
        raise _export_error(graph, model, fmt, err) from None
    os.replace(tmp, path)


# ---- running and verifying ---------------------------------------------------------------------------------------
def run_exported(path: str | Path, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Runs an exported graph (``.onnx`` with onnxruntime, ``.pt`` with ``torch.jit.load``) on ``x``."""
    path = Path(path)
    if path.suffix == ".onnx":
        session = _require_onnx().InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x.detach().cpu().numpy()}
        return tuple(torch.from_numpy(out) for out in session.run(None, feed))
    with _quiet_deprecations(), torch.no_grad():
        module = torch.jit.load(str(path), map_location=x.device)
        return _as_tuple(module(x))


def _as_tuple(out: Any) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, tuple | list) else (out,)


def _compare(graph: Graph, expected: Sequence[torch.Tensor], actual: Sequence[torch.Tensor], atol: float) -> None:
    for name, want, got in zip(graph.output_names, expected, actual, strict=True):
        want, got = want.detach().cpu(), got.detach().cpu()
        if want.shape != got.shape or want.dtype != got.dtype:
            raise ExportError(f"exported {graph.name} output {name!r}: {tuple(got.shape)} {got.dtype}, the model "
                              f"gives {tuple(want.shape)} {want.dtype}")
        diff = (want.double() - got.double()).abs().max().item() if want.numel() else 0.0
        limit = 0.0 if not want.is_floating_point() else atol
        if diff > limit:
            raise ExportError(f"exported {graph.name} output {name!r} differs from the model by {diff:.3g} "
                              f"(allowed {limit:g}): the network has input-dependent control flow or an operation "
                              "the exporter translates differently")


def verify_graph(graph: Graph, path: Path, atol: float = 1e-4) -> None:
    """Runs the exported ``graph`` at ``path`` on a batch of ``VERIFY_BATCH`` and compares with the model.

    Raises:
        ExportError: when an output's shape, dtype or values (beyond ``atol``) differ.
    """
    x = graph.make_input(VERIFY_BATCH)
    with torch.no_grad():
        expected = _as_tuple(graph.module(x))
    try:
        actual = run_exported(path, x)
    except Exception as err:  # onnxruntime / TorchScript refuse the graph: one line instead of their stack
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportError(f"the exported {graph.name} ({path.name}) does not run: {message}") from None
    _compare(graph, expected, actual, atol)


# ---- the sidecar -------------------------------------------------------------------------------------------------
def _tensor_spec(name: str, tensor: torch.Tensor) -> dict[str, Any]:
    return {"name": name, "shape": ["batch", *tensor.shape[1:]], "dtype": str(tensor.dtype).removeprefix("torch.")}


def _graph_spec(graph: Graph, fmt: str) -> dict[str, Any]:
    x = graph.make_input(1)
    with torch.no_grad():
        outputs = _as_tuple(graph.module(x))
    return {
        "file": graph.name + SUFFIX[fmt],
        "inputs": [_tensor_spec(graph.input_name, x)],
        "outputs": [_tensor_spec(n, t) for n, t in zip(graph.output_names, outputs, strict=True)],
    }


def sidecar(model: nn.Module, graphs: Sequence[Graph], fmt: str) -> dict[str, Any]:
    """What ``export.json`` holds: the variant, image shape, pixel range and each graph's inputs and outputs."""
    from lightning_ae import __version__

    return {
        "variant": type(model).__name__,
        "format": fmt,
        "lightning_ae_version": __version__,
        "image_shape": list(model.image_shape),
        "pixel_range": list(model.pixel_range),
        "graphs": {g.name: _graph_spec(g, fmt) for g in graphs},
    }


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


# ---- the entry point -----------------------------------------------------------------------------------------------
def export_model(
    model: nn.Module, out: str | Path, format: Format = "onnx", verify: bool = True, atol: float = 1e-4,
    opset: int = 17,
) -> Path:
    """Exports ``model``'s encoder and decoder to ``out`` as ``encoder.onnx``/``decoder.onnx`` (or ``.pt``) and
    ``export.json``.

    Args:
        model: a lightning_ae autoencoder (any variant); exported in fp32 eval mode on its device, its mode
            restored afterwards.
        out: output folder (created).
        format: ``onnx`` (legacy TorchScript-based exporter, dynamic batch axis) or ``torchscript``
            (``torch.jit.trace``).
        verify: run the written graphs and compare them with the model (recommended).
        atol: largest allowed absolute difference of float outputs when verifying.
        opset: ONNX opset version.

    Returns:
        The path of ``export.json``.

    Raises:
        ValueError: for an unknown ``format``.
        ImportError: for ``onnx`` without the ``export`` extra (names the extra).
        ExportError: for a network that cannot be exported (names the operation) or an export that does not match.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if format == "onnx":
        _require_onnx()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    training = model.training
    model.eval()
    try:
        graphs = export_graphs(model)
        for graph in graphs:
            path = out / (graph.name + SUFFIX[format])
            _write_graph(graph, model, format, path, opset)
            if verify:
                verify_graph(graph, path, atol)
        meta = sidecar(model, graphs, format)
    finally:
        model.train(training)
    path = out / SIDECAR
    _write_json(path, meta)
    return path


# ---- the command line --------------------------------------------------------------------------------------------
def export_command(
    ckpt_path: str, out: str, format: Format = "onnx", model: str | None = None, verify: bool = True,
    atol: float = 1e-4, opset: int = 17,
) -> Path:
    """``lightning-ae export``: exports the encoder and decoder of a checkpoint or model folder.

    Args:
        ckpt_path: a checkpoint written by ``lightning-ae fit``, or a model folder (``save_pretrained``).
        out: output folder.
        format: ``onnx`` or ``torchscript``.
        model: model class (e.g. ``VAE``) of a checkpoint that does not name one (not written by the CLI).
        verify: run the exported graphs and compare them with the model.
        atol: largest allowed absolute difference of float outputs when verifying.
        opset: ONNX opset version.
    """
    from lightning_ae.pretrained import load_model

    path = export_model(load_model(ckpt_path, model), out, format, verify, atol, opset)
    files = [g["file"] for g in json.loads(path.read_text())["graphs"].values()]
    print(f"exported {ckpt_path} ({format}) to {path.parent}: {', '.join(files)}, {path.name}")
    return path


def export_main(args: Sequence[str]) -> None:
    """Parses ``lightning-ae export`` arguments and runs :func:`export_command`; an error is one line, exit 1."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog="lightning-ae export", description=export_command.__doc__)
    parser.add_function_arguments(export_command, as_group=False)
    cfg = parser.parse_args(list(args))
    try:
        export_command(**cfg.as_dict())
    except (ExportError, ImportError, ValueError, FileNotFoundError) as err:
        raise SystemExit(f"lightning-ae export: error: {err}") from None
