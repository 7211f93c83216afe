"""Export a trained model's graphs, ONNX or TorchScript, with a JSON sidecar.

Each model declares the graphs it exports (``model.export_graphs()``, a list of :class:`~lightning_ae.graphs.Graph`):

* a VQ-VAE (every quantizer): ``encoder`` images -> code indices (int64; ``(B, Q, h, w)`` for residual VQ),
  ``decoder`` code indices -> images;
* a VAE: ``encoder`` images -> ``mean`` and ``logvar`` of ``q(z|x)``, ``decoder`` z -> images; the conditional VAE
  takes ``labels`` (int64 class indices) as a second input of both;
* every other autoencoder: ``encoder`` images -> codes (``model.encode``: sparse codes for a sparse
  autoencoder), ``decoder`` codes -> images;
* the PixelCNN prior: ``prior`` code indices -> logits of each code given the ones before it (one step of
  sampling runs it once per position), and its VQ-VAE's ``decoder`` code indices -> images.

Decoder outputs are images in the model's ``pixel_range`` (``output_to_image``: sigmoid of Bernoulli logits,
the mean of a Gaussian). The batch dimension is dynamic. ``export.json`` beside the graphs names every input
and output with its shape (``"batch"`` for the dynamic one), dtype, the pixel range and the image shape.

Every export is verified before it is kept: the written graphs are run (onnxruntime / ``torch.jit.load``) on a
batch of another size than the one traced and compared with the PyTorch model (max abs difference <= ``atol``;
integer outputs must be equal). The whole set is written into a temporary folder and moved into place only when
every graph passed, so a refused export leaves a previous one untouched.

    lightning-ae export --ckpt_path model.ckpt --format onnx --out exported/
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from lightning_ae.graphs import Graph

Format = Literal["onnx", "torchscript", "diffusers"]
FORMATS: tuple[str, ...] = ("onnx", "torchscript", "diffusers")
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}
SIDECAR = "export.json"
TRACE_BATCH, VERIFY_BATCH = 2, 3


class ExportError(RuntimeError):
    """A model, or one of its networks, that cannot be exported or whose export does not match the model."""


def export_graphs(model: nn.Module) -> list[Graph]:
    """The graphs ``model`` declares with its ``export_graphs()`` method (see the module docstring).

    Raises:
        ExportError: for a model that declares none, or refuses export (naming why).
    """
    declare = getattr(model, "export_graphs", None)
    if declare is None:
        raise ExportError(f"{type(model).__name__} is not a model of lightning_ae: it declares no export_graphs()")
    missing = [m for m in ("image_shape", "pixel_range") if not hasattr(model, m)]
    if missing:
        raise ExportError(f"{type(model).__name__} lacks {missing}, which export.json records")
    try:
        return declare()
    except (NotImplementedError, ValueError) as err:
        raise ExportError(f"{type(model).__name__} is not exported: {err}") from None


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
    names = [*graph.input_names, *graph.output_names]
    torch.onnx.export(
        graph.module, graph.make_inputs(TRACE_BATCH), str(path), dynamo=False, opset_version=opset,
        input_names=list(graph.input_names), output_names=list(graph.output_names),
        dynamic_axes={name: {0: "batch"} for name in names},
    )


def _write_torchscript(graph: Graph, path: Path) -> None:
    traced = torch.jit.trace(graph.module, graph.make_inputs(TRACE_BATCH), check_trace=False)
    torch.jit.save(traced, str(path))


@contextmanager
def _quiet_deprecations() -> Iterator[None]:
    """Silences torch's deprecation notices of ``torch.jit`` and the TorchScript-based ONNX exporter, and the
    tracer's warnings: they are the paths that export these models offline (the dynamo exporter needs onnxscript),
    and every export is verified on another batch size than the one traced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.(jit|onnx)")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


def _write_graph(graph: Graph, model: nn.Module, fmt: str, path: Path, opset: int) -> None:
    try:
        with _quiet_deprecations():
            if fmt == "onnx":
                _write_onnx(graph, path, opset)
            else:
                _write_torchscript(graph, path)
    except Exception as err:  # the exporters raise many types; one line naming the operation replaces them
        raise _export_error(graph, model, fmt, err) from None


# ---- running and verifying ---------------------------------------------------------------------------------------
def run_exported(path: str | Path, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Runs an exported graph (``.onnx`` with onnxruntime, ``.pt`` with ``torch.jit.load``) on ``inputs``."""
    path = Path(path)
    if path.suffix == ".onnx":
        session = _require_onnx().InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed = {spec.name: x.detach().cpu().numpy() for spec, x in zip(session.get_inputs(), inputs, strict=True)}
        return tuple(torch.from_numpy(out) for out in session.run(None, feed))
    with _quiet_deprecations(), torch.no_grad():
        module = torch.jit.load(str(path), map_location=inputs[0].device)
        return _as_tuple(module(*inputs))


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
    inputs = graph.make_inputs(VERIFY_BATCH)
    with torch.no_grad():
        expected = _as_tuple(graph.module(*inputs))
    try:
        actual = run_exported(path, *inputs)
    except Exception as err:  # onnxruntime / TorchScript refuse the graph: one line instead of their stack
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportError(f"the exported {graph.name} ({path.name}) does not run: {message}") from None
    _compare(graph, expected, actual, atol)


# ---- the sidecar -------------------------------------------------------------------------------------------------
def _tensor_spec(name: str, tensor: torch.Tensor) -> dict[str, Any]:
    return {"name": name, "shape": ["batch", *tensor.shape[1:]], "dtype": str(tensor.dtype).removeprefix("torch.")}


def _graph_spec(graph: Graph, fmt: str) -> dict[str, Any]:
    inputs = graph.make_inputs(1)
    with torch.no_grad():
        outputs = _as_tuple(graph.module(*inputs))
    return {
        "file": graph.name + SUFFIX[fmt],
        "inputs": [_tensor_spec(n, t) for n, t in zip(graph.input_names, inputs, strict=True)],
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


def _write_set(model: nn.Module, graphs: Sequence[Graph], fmt: str, folder: Path, verify: bool, atol: float,
               opset: int) -> None:
    """Writes (and verifies) every graph and ``export.json`` into ``folder``."""
    for graph in graphs:
        path = folder / (graph.name + SUFFIX[fmt])
        _write_graph(graph, model, fmt, path, opset)
        if verify:
            verify_graph(graph, path, atol)
    (folder / SIDECAR).write_text(json.dumps(sidecar(model, graphs, fmt), indent=2) + "\n")


def _move_into_place(staged: Path, out: Path, last: str = SIDECAR) -> None:
    """Moves the verified files of ``staged`` into ``out``: the folder itself when ``out`` does not exist, else
    file by file (each an atomic rename), ``last`` (the sidecar or config) last, so a reader never sees a
    description that does not describe the files beside it."""
    if not out.exists():
        os.replace(staged, out)
        return
    files = sorted(staged.iterdir(), key=lambda p: p.name == last)
    for file in files:
        os.replace(file, out / file.name)
    staged.rmdir()


@contextmanager
def staged_folder(model: nn.Module, out: str | Path, last: str = SIDECAR) -> Iterator[Path]:
    """A temporary folder beside ``out`` to write an export of ``model`` into, the model in eval mode: when the
    block ends without an error its files are moved into ``out`` (:func:`_move_into_place`, ``last`` last); the
    folder is removed and the model's mode restored either way, so a refused export leaves ``out`` as it was.

    Raises:
        ExportError: when ``out`` is a file.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file, not a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    training = model.training
    model.eval()
    staged = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        yield staged
        _move_into_place(staged, out, last)
    finally:
        model.train(training)
        shutil.rmtree(staged, ignore_errors=True)


# ---- the entry point -----------------------------------------------------------------------------------------------
def export_model(
    model: nn.Module, out: str | Path, format: Format = "onnx", verify: bool = True, atol: float = 1e-4,
    opset: int = 17,
) -> Path:
    """Exports the graphs ``model`` declares (``model.export_graphs()``) to ``out`` as ``<graph>.onnx`` (or
    ``.pt``) and ``export.json``.

    Everything is written into a temporary folder beside ``out`` and verified there; only a complete, verified set
    is moved into ``out``. A refused export leaves ``out`` (and a previous export in it) as it was.

    Args:
        model: a lightning_ae model (any variant, or the prior); exported in fp32 eval mode on its device, its mode
            restored afterwards.
        out: output folder (created).
        format: ``onnx`` (legacy TorchScript-based exporter, dynamic batch axis), ``torchscript``
            (``torch.jit.trace``) or ``diffusers`` (a folder ``diffusers.AutoencoderKL`` / ``VQModel`` loads:
            :func:`lightning_ae.interop.diffusers.export_diffusers`; returns its ``config.json``).
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
    if format == "diffusers":
        from lightning_ae.interop.diffusers import export_diffusers

        return export_diffusers(model, out, verify, atol)
    if format == "onnx":
        _require_onnx()
    with staged_folder(model, out) as staged:
        _write_set(model, export_graphs(model), format, staged, verify, atol, opset)
    return Path(out) / SIDECAR


# ---- the command line --------------------------------------------------------------------------------------------
def export_command(
    ckpt_path: str, out: str, format: Format = "onnx", model: str | None = None, verify: bool = True,
    atol: float = 1e-4, opset: int = 17,
) -> Path:
    """``lightning-ae export``: exports the encoder and decoder of a checkpoint or model folder.

    Args:
        ckpt_path: a checkpoint written by ``lightning-ae fit``, or a model folder (``save_pretrained``).
        out: output folder.
        format: ``onnx``, ``torchscript`` or ``diffusers`` (an ``AutoencoderKL`` / ``VQModel`` folder).
        model: model class (e.g. ``VAE``) of a checkpoint that does not name one (not written by the CLI).
        verify: run the exported graphs and compare them with the model.
        atol: largest allowed absolute difference of float outputs when verifying.
        opset: ONNX opset version.
    """
    from lightning_ae.pretrained import load_model

    path = export_model(load_model(ckpt_path, model), out, format, verify, atol, opset)
    if format == "diffusers":
        print(f"exported {ckpt_path} (diffusers {json.loads(path.read_text())['_class_name']}) to {path.parent}")
        return path
    files = [g["file"] for g in json.loads(path.read_text())["graphs"].values()]
    print(f"exported {ckpt_path} ({format}) to {path.parent}: {', '.join(files)}, {path.name}")
    return path


def export_main(args: Sequence[str], debug: bool = False) -> None:
    """Parses ``lightning-ae export`` arguments and runs :func:`export_command`; bad input (a missing or refused
    checkpoint or folder, a model that cannot be exported) is one line on stderr and exit status 2 (``debug``: the
    traceback instead)."""
    import sys

    from jsonargparse import ArgumentParser

    from lightning_ae.errors import InputError

    parser = ArgumentParser(prog="lightning-ae export", description=export_command.__doc__)
    parser.add_function_arguments(export_command, as_group=False)
    cfg = parser.parse_args(list(args))
    try:
        export_command(**cfg.as_dict())
    except (ExportError, InputError, ImportError, ValueError, FileNotFoundError) as err:
        if debug:
            raise
        print(f"lightning-ae export: error: {' '.join(str(err).split())}", file=sys.stderr)
        raise SystemExit(2) from None
