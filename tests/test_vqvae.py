"""VQVAE specifics beyond the shared contract (tests/test_contract.py): the index interface the prior and the
callbacks use, codebook updates only in training, usage logging, mixed precision."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything

from lightning_ae import VQVAE, FakeImageDataModule, VectorQuantizer
from lightning_ae.quantizers import perplexity_of_counts

SMALL = {"latent_dim": 8, "hidden_channels": 16, "res_channels": 8}


def small(**quantizer_options) -> VQVAE:
    seed_everything(0)
    return VQVAE(image_shape=(1, 28, 28), quantizer=VectorQuantizer(32, code_dim=8, **quantizer_options), **SMALL)


def test_index_interface() -> None:
    model = small().eval()
    x = torch.rand(3, 1, 28, 28)
    z_e = model.encode(x)
    assert z_e.shape == (3, 8, 7, 7)
    indices = model.encode_indices(x)
    assert indices.shape == (3, 7, 7) and indices.dtype == torch.long
    assert model.quantizer.num_codes == 32
    images = model.decode_indices(indices)
    assert images.shape == x.shape
    torch.testing.assert_close(images, model(x))  # forward goes through the same codes
    torch.testing.assert_close(model.decode(model.quantizer.indices_to_codes(indices)), images)


def test_bad_configuration_is_named() -> None:
    with pytest.raises(ValueError, match="network"):
        VQVAE(network="mlp")
    with pytest.raises(ValueError, match="data_variance"):
        VQVAE(data_variance=0.0)


def test_data_variance_weights_the_reconstruction_term() -> None:
    """sonnet's loss: MSE / data variance + the quantizer's terms; the logged recon stays the plain MSE."""
    x = torch.rand(4, 1, 28, 28)
    plain = small()
    scaled = VQVAE(image_shape=(1, 28, 28), quantizer=VectorQuantizer(32, code_dim=8), data_variance=0.0625, **SMALL)
    scaled.load_state_dict(plain.state_dict())
    _out = plain.loss_terms(x, "val")
    plain_terms, x_hat = _out.as_dict(), _out.reconstruction
    terms = scaled.loss_terms(x, "val").as_dict()
    mse = ((x_hat - x) ** 2).mean()
    torch.testing.assert_close(terms["recon"], mse)
    torch.testing.assert_close(terms["loss"], mse / 0.0625 + terms["commitment"])
    torch.testing.assert_close(plain_terms["loss"], mse + plain_terms["commitment"])


def test_only_training_updates_the_codebook() -> None:
    model = small(kmeans_init=True, restart_threshold=0.5)
    x = torch.rand(4, 1, 28, 28)
    before = model.quantizer.codebook.detach().clone()
    terms = model.loss_terms(x, "val").as_dict()
    assert torch.equal(before, model.quantizer.codebook) and not bool(model.quantizer.initialized)
    terms = model.loss_terms(x, "train").as_dict()
    assert not torch.equal(before, model.quantizer.codebook) and bool(model.quantizer.initialized)
    assert set(terms) == {"loss", "recon", "codebook", "commitment", "perplexity"}
    torch.testing.assert_close(terms["loss"], terms["recon"] + terms["commitment"])  # EMA: no codebook loss


def test_usage_metrics_are_logged(tmp_path) -> None:
    model = small()
    data = FakeImageDataModule(image_shape=(1, 28, 28), num_train=64, val_size=32, batch_size=16)
    trainer = Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=data)
    m = trainer.callback_metrics
    assert m["train/codebook_dead_codes"] == 32 * (1 - m["train/codebook_used_fraction"])
    # the validation figures, recomputed from the indices of the validation images under the final codebook
    with torch.no_grad():
        indices = model.eval().encode_indices(data.transform(data.val_set.images, training=False))
    counts = torch.bincount(indices.flatten(), minlength=32)
    assert m["val/codebook_perplexity"].item() == pytest.approx(perplexity_of_counts(counts).item(), rel=1e-5)
    assert m["val/codebook_used_fraction"].item() == pytest.approx((counts > 0).float().mean().item())
    assert m["val/codebook_dead_codes"].item() == (counts == 0).sum().item()
    assert "train/perplexity" in m and "val/commitment" in m


def test_bf16_autocast_matches_fp32_indices() -> None:
    model = small().eval()
    x = torch.rand(4, 1, 28, 28)
    z_e = model.encode(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z_bf16 = model.encode(x)
        out = model.quantize(z_bf16)
        terms = model.loss_terms(x, "val").as_dict()
    assert z_bf16.dtype == torch.bfloat16 and torch.isfinite(terms["loss"])
    assert out.commitment_loss.dtype == torch.float32
    codes = model.quantizer.codebook.detach()
    expected = torch.cdist(z_bf16.float().movedim(1, -1).reshape(-1, 8), codes).argmin(1)
    assert torch.equal(out.indices.reshape(-1), expected)
    agree = (out.indices == model.quantize(z_e).indices).float().mean()
    assert agree > 0.9  # bf16 encoder activations differ slightly from fp32 ones; the lookup itself is fp32
