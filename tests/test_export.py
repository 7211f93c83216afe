"""Export of encoder and decoder to ONNX and TorchScript: every variant run in onnxruntime / torch.jit.load and
compared with the PyTorch model, the sidecar, dynamic batch, and errors that name the problem."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from torch import nn

from lightning_ae import (
    FSQ,
    IWAE,
    LFQ,
    VAE,
    VQVAE,
    Autoencoder,
    AutoencoderKL,
    ConditionalVAE,
    ContractiveAutoencoder,
    DenoisingAutoencoder,
    PixelCNNPrior,
    ResidualVQ,
    SparseAutoencoder,
    TransformerPrior,
    VampVAE,
    VectorQuantizer,
)
from lightning_ae.export import ExportError, export_model

VQ = {"latent_dim": 8, "hidden_channels": 16, "res_channels": 8}
LDM_SMALL = {"ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [8]}
QUANTIZERS = {
    "vq": lambda: VectorQuantizer(16, code_dim=8),
    "vq-rotation": lambda: VectorQuantizer(16, code_dim=8, rotation_trick=True),
    "vq-factorized": lambda: VectorQuantizer(16, code_dim=8, codebook_dim=4, cosine=True),
    "fsq": lambda: FSQ(levels=[4, 3, 2], code_dim=8),
    "lfq": lambda: LFQ(num_codes=16, code_dim=8),
    "rvq": lambda: ResidualVQ(num_quantizers=3, num_codes=16, code_dim=8, cosine=True),
}


def _prior() -> PixelCNNPrior:
    folder = Path(tempfile.mkdtemp()) / "vqvae"
    VQVAE(quantizer=QUANTIZERS["vq"](), **VQ).save_pretrained(folder)
    return PixelCNNPrior(str(folder), channels=8, num_layers=2, kernel_size=3)


def _transformer_prior(quantizer: str, num_classes: int | None) -> TransformerPrior:
    folder = Path(tempfile.mkdtemp()) / "vqvae"
    VQVAE(quantizer=QUANTIZERS[quantizer](), **VQ).save_pretrained(folder)
    return TransformerPrior(str(folder), dim=16, num_layers=1, num_heads=2, depth_layers=1, num_classes=num_classes)


VARIANTS = {
    "ae-mlp": lambda: Autoencoder(latent_dim=4, recon_loss="bce"),
    "ae-conv": lambda: Autoencoder(latent_dim=4, network="conv", image_shape=(3, 16, 16), pixel_range=(-1.0, 1.0)),
    "dae": lambda: DenoisingAutoencoder(latent_dim=4),
    "sae-kl": lambda: SparseAutoencoder(latent_dim=8, sparsity="kl"),
    "sae-topk": lambda: SparseAutoencoder(latent_dim=8, sparsity="topk", k=3),
    "cae-sigmoid": lambda: ContractiveAutoencoder(latent_dim=4, penalty="sigmoid", network="sigmoid"),
    "vae-bernoulli": lambda: VAE(latent_dim=4),
    "vae-gaussian-conv": lambda: VAE(latent_dim=4, network="conv", likelihood="gaussian", gaussian_std=None),
    "iwae": lambda: IWAE(latent_dim=4),
    "vamp": lambda: VampVAE(latent_dim=4, num_pseudo_inputs=5),
    "cvae": lambda: ConditionalVAE(latent_dim=4, num_classes=3),
    **{f"vqvae-{name}": (lambda q=q: VQVAE(quantizer=q(), **VQ)) for name, q in QUANTIZERS.items()},
    "autoencoder-kl": lambda: AutoencoderKL(image_shape=(3, 16, 16), network_options=LDM_SMALL),
    "vqvae-ldm-fsq": lambda: VQVAE(network="ldm", latent_dim=3, image_shape=(3, 16, 16), network_options=LDM_SMALL,
                                   quantizer=FSQ(levels=[4, 3, 2], code_dim=3)),
    "prior": _prior,
    "transformer-prior": lambda: _transformer_prior("vq", None),
    "transformer-prior-classes": lambda: _transformer_prior("fsq", 3),
    "transformer-prior-rvq": lambda: _transformer_prior("rvq", None),
}


def _images(model: nn.Module, n: int) -> torch.Tensor:
    low, high = model.pixel_range
    return torch.rand(n, *model.image_shape) * (high - low) + low


def _run(path: Path, *inputs: torch.Tensor) -> list[np.ndarray]:
    """The exported graph at ``path`` on ``inputs``, run outside lightning_ae (onnxruntime or torch.jit.load)."""
    if path.suffix == ".onnx":
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {s.name: x.numpy() for s, x in zip(session.get_inputs(), inputs, strict=True)})
    with torch.no_grad():
        out = torch.jit.load(str(path))(*inputs)
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


Reference = dict[str, tuple[tuple[torch.Tensor, ...], list[torch.Tensor]]]


@torch.no_grad()
def _reference(model: nn.Module, x: torch.Tensor) -> Reference:
    """{graph: (its inputs, the PyTorch model's outputs on them)}, computed from the model's own methods."""
    if isinstance(model, TransformerPrior):
        indices = model.vqvae.encode_indices(x)
        inputs = (indices,) if model.num_classes is None else (indices, torch.tensor([2, 0, 1, 1, 0]))
        return {"prior": (inputs, [model(*inputs)]), "decoder": ((indices,), [model.vqvae.decode_indices(indices)])}
    if isinstance(model, PixelCNNPrior):
        indices = model.vqvae.encode_indices(x)
        return {"prior": ((indices,), [model(indices)]), "decoder": ((indices,), [model.vqvae.decode_indices(indices)])}
    if isinstance(model, VQVAE):
        indices = model.encode_indices(x)
        return {"encoder": ((x,), [indices]), "decoder": ((indices,), [model.decode_indices(indices)])}
    if isinstance(model, ConditionalVAE):
        y = torch.tensor([2, 0, 1, 1, 0])
        q = model.posterior(x, y)
        return {"encoder": ((x, y), [q.mean, q.logvar]),
                "decoder": ((q.mean, y), [model.output_to_image(model.decode(q.mean, y))])}
    if isinstance(model, VAE):
        q = model.posterior(x)
        mean, logvar = model.latent_grid(q.mean), model.latent_grid(q.logvar)
        return {"encoder": ((x,), [mean, logvar]),
                "decoder": ((mean,), [model.output_to_image(model.decode(mean))])}
    z = model.encode(x)
    return {"encoder": ((x,), [z]), "decoder": ((z,), [model.output_to_image(model.decode(z))])}


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_exported_graphs_match_the_model(tmp_path: Path, name: str, fmt: str) -> None:
    """Every variant, every quantizer and the prior: each exported graph, run outside lightning_ae on a batch of
    another size than traced, equals the model's own methods (indices exactly, floats within 1e-4)."""
    torch.manual_seed(0)
    model = VARIANTS[name]().eval()
    sidecar = json.loads(export_model(model, tmp_path / "out", fmt).read_text())
    suffix = ".onnx" if fmt == "onnx" else ".pt"
    reference = _reference(model, _images(model, 5))
    assert set(sidecar["graphs"]) == set(reference)
    for part, (inputs, expected) in reference.items():
        outputs = _run(tmp_path / "out" / f"{part}{suffix}", *inputs)
        spec = sidecar["graphs"][part]
        assert spec["file"] == f"{part}{suffix}" and len(outputs) == len(expected) == len(spec["outputs"])
        assert [i["dtype"] for i in spec["inputs"]] == [str(t.dtype).removeprefix("torch.") for t in inputs]
        for got, want, out_spec in zip(outputs, expected, spec["outputs"], strict=True):
            assert got.shape == tuple(want.shape) and out_spec["shape"] == ["batch", *want.shape[1:]]
            assert out_spec["dtype"] == str(want.dtype).removeprefix("torch.") == str(got.dtype)
            if want.is_floating_point():
                assert np.abs(got - want.numpy()).max() <= 1e-4
            else:
                np.testing.assert_array_equal(got, want.numpy())
    assert sidecar["variant"] == type(model).__name__ and sidecar["format"] == fmt
    assert sidecar["pixel_range"] == list(model.pixel_range) and sidecar["image_shape"] == list(model.image_shape)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and model.training is False  # nothing staged left


def test_conditional_vae_graphs_take_labels(tmp_path: Path) -> None:
    spec = json.loads(export_model(VARIANTS["cvae"](), tmp_path, "torchscript").read_text())["graphs"]
    assert [i["name"] for i in spec["encoder"]["inputs"]] == ["images", "labels"]
    assert [(i["name"], i["dtype"]) for i in spec["decoder"]["inputs"]] == [("codes", "float32"), ("labels", "int64")]


def test_a_refused_export_leaves_the_previous_one_byte_identical(tmp_path: Path) -> None:
    out = tmp_path / "exported"
    export_model(VARIANTS["ae-mlp"](), out, "torchscript")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ExportError, match="differs from the model"):
        export_model(Autoencoder(encoder=_BatchBaked(), latent_dim=4), out, "torchscript")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported"]  # the staging folder is gone
    export_model(VARIANTS["ae-conv"](), out, "torchscript")  # a verified export replaces the whole set
    assert json.loads((out / "export.json").read_text())["image_shape"] == [3, 16, 16]
    assert all(before[name] != data for name, data in ((p.name, p.read_bytes()) for p in out.iterdir()))


def test_vae_exports_mean_and_logvar_and_vqvae_indices(tmp_path: Path) -> None:
    vae = json.loads(export_model(VARIANTS["vae-bernoulli"](), tmp_path / "vae").read_text())
    assert [o["name"] for o in vae["graphs"]["encoder"]["outputs"]] == ["mean", "logvar"]
    vq = json.loads(export_model(VARIANTS["vqvae-vq"](), tmp_path / "vq").read_text())
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
    with pytest.raises(ExportError, match="not a model of lightning_ae"):
        export_model(nn.Linear(2, 2), tmp_path, "onnx")


def test_missing_extra_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)  # import onnxruntime now fails
    with pytest.raises(ImportError, match=r"lightning-ae\[export\]"):
        export_model(VARIANTS["ae-mlp"](), tmp_path, "onnx")
