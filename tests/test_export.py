"""Export of encoder and decoder to ONNX and TorchScript: every variant run in onnxruntime / torch.jit.load and
compared with the PyTorch model, the sidecar, dynamic batch, and errors that name the problem."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from torch import nn

from lightning_ae import (
    VAE,
    VQVAE,
    Autoencoder,
    ContractiveAutoencoder,
    DenoisingAutoencoder,
    SparseAutoencoder,
)
from lightning_ae.export import ExportError, export_model

VARIANTS = {
    "ae-mlp": lambda: Autoencoder(latent_dim=4, recon_loss="bce"),
    "ae-conv": lambda: Autoencoder(latent_dim=4, network="conv", image_shape=(3, 16, 16), pixel_range=(-1.0, 1.0)),
    "dae": lambda: DenoisingAutoencoder(latent_dim=4),
    "sae-kl": lambda: SparseAutoencoder(latent_dim=8, sparsity="kl"),
    "sae-topk": lambda: SparseAutoencoder(latent_dim=8, sparsity="topk", k=3),
    "cae-sigmoid": lambda: ContractiveAutoencoder(latent_dim=4, penalty="sigmoid", network="sigmoid"),
    "vae-bernoulli": lambda: VAE(latent_dim=4),
    "vae-gaussian-conv": lambda: VAE(latent_dim=4, network="conv", likelihood="gaussian", gaussian_std=None),
    "vqvae": lambda: VQVAE(latent_dim=8, num_codes=16, hidden_channels=16, res_channels=8),
}


def _images(model: nn.Module, n: int) -> torch.Tensor:
    low, high = model.pixel_range
    return torch.rand(n, *model.image_shape) * (high - low) + low


def _run(path: Path, x: torch.Tensor) -> list[np.ndarray]:
    """The exported graph at ``path`` on ``x``, run outside lightning_ae (onnxruntime or torch.jit.load)."""
    if path.suffix == ".onnx":
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        out = torch.jit.load(str(path))(x)
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


def _reference(model: nn.Module, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, list[torch.Tensor]]:
    """(encoder outputs, the decoder's input for the decoder check, decoder outputs) of the PyTorch model."""
    with torch.no_grad():
        if isinstance(model, VQVAE):
            indices = model.encode_indices(x)
            return [indices], indices, [model.decode_indices(indices)]
        if isinstance(model, VAE):
            q = model.posterior(x)
            return [q.mean, q.logvar], q.mean, [model.output_to_image(model.decode(q.mean))]
        z = model.encode(x)
        return [z], z, [model.output_to_image(model.decode(z))]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_exported_graphs_match_the_model(tmp_path: Path, name: str, fmt: str) -> None:
    torch.manual_seed(0)
    model = VARIANTS[name]().eval()
    sidecar = json.loads(export_model(model, tmp_path, fmt).read_text())
    suffix = ".onnx" if fmt == "onnx" else ".pt"
    x = _images(model, 5)  # another batch size than traced: the batch axis is dynamic
    encoded, code, decoded = _reference(model, x)
    for part, inp, expected in (("encoder", x, encoded), ("decoder", code, decoded)):
        outputs = _run(tmp_path / f"{part}{suffix}", inp)
        spec = sidecar["graphs"][part]
        assert spec["file"] == f"{part}{suffix}" and len(outputs) == len(expected) == len(spec["outputs"])
        for got, want, out_spec in zip(outputs, expected, spec["outputs"], strict=True):
            assert got.shape == tuple(want.shape) and out_spec["shape"] == ["batch", *want.shape[1:]]
            assert out_spec["dtype"] == str(want.dtype).removeprefix("torch.") == str(got.dtype)
            if want.is_floating_point():
                assert np.abs(got - want.numpy()).max() <= 1e-4
            else:
                np.testing.assert_array_equal(got, want.numpy())
    assert sidecar["variant"] == type(model).__name__ and sidecar["format"] == fmt
    assert sidecar["pixel_range"] == list(model.pixel_range) and sidecar["image_shape"] == list(model.image_shape)
    assert sidecar["graphs"]["encoder"]["inputs"][0] == {"name": "images", "shape": ["batch", *model.image_shape],
                                                         "dtype": "float32"}
    assert not list(tmp_path.glob(".*.tmp")) and model.training is False


def test_vae_exports_mean_and_logvar_and_vqvae_indices(tmp_path: Path) -> None:
    vae = json.loads(export_model(VARIANTS["vae-bernoulli"](), tmp_path / "vae").read_text())
    assert [o["name"] for o in vae["graphs"]["encoder"]["outputs"]] == ["mean", "logvar"]
    vq = json.loads(export_model(VARIANTS["vqvae"](), tmp_path / "vq").read_text())
    assert vq["graphs"]["encoder"]["outputs"] == [{"name": "indices", "shape": ["batch", 7, 7], "dtype": "int64"}]
    assert vq["graphs"]["decoder"]["inputs"][0]["dtype"] == "int64"


def test_training_mode_is_restored(tmp_path: Path) -> None:
    model = VARIANTS["ae-mlp"]().train()
    export_model(model, tmp_path, "torchscript")
    assert model.training


class _Unsupported(nn.Module):
    """An encoder using an operation the ONNX exporter has no translation for."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(784, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.i0(self.linear(x.flatten(1)))


class _BatchBaked(nn.Module):
    """An encoder whose trace bakes the batch size into the graph (``int(...)`` of a shape)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(784, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1)) * float(int(x.shape[0]))


def test_unsupported_operation_is_named(tmp_path: Path) -> None:
    model = Autoencoder(encoder=_Unsupported(), latent_dim=4)
    with pytest.raises(ExportError, match=r"encoder of Autoencoder \(_Unsupported\).*aten::i0") as info:
        export_model(model, tmp_path, "onnx")
    assert "\n" not in str(info.value) and not list(tmp_path.iterdir())


def test_export_that_does_not_match_the_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="encoder output 'codes' differs from the model"):
        export_model(Autoencoder(encoder=_BatchBaked(), latent_dim=4), tmp_path, "torchscript")


def test_bad_format_and_non_autoencoder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="format must be one of"):
        export_model(VARIANTS["ae-mlp"](), tmp_path, "tflite")  # type: ignore[arg-type]
    with pytest.raises(ExportError, match="not an autoencoder"):
        export_model(nn.Linear(2, 2), tmp_path, "onnx")


def test_missing_extra_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)  # import onnxruntime now fails
    with pytest.raises(ImportError, match=r"lightning-ae\[export\]"):
        export_model(VARIANTS["ae-mlp"](), tmp_path, "onnx")
