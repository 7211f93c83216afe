"""One contract every variant honours: shapes, batch formats, input errors, NaN guard, training, checkpoints.

A new variant adds its ``pytest.param`` to ``VARIANTS``; nothing is copied per variant. The contract assumes
``model.eval()`` makes ``forward`` deterministic (a VAE reconstructs from its posterior mean in eval).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything

from lightning_ae import (
    VAE,
    VQVAE,
    Autoencoder,
    AutoencoderBase,
    AutoencoderKL,
    ContractiveAutoencoder,
    DenoisingAutoencoder,
    FakeImageDataModule,
    SparseAutoencoder,
    VectorQuantizer,
)

VARIANTS = [
    pytest.param(Autoencoder, {"recon_loss": "bce"}, (1, 28, 28), id="ae-mlp-bce"),
    pytest.param(Autoencoder, {"network": "conv", "latent_dim": 8}, (3, 32, 32), id="ae-conv-mse"),
    pytest.param(DenoisingAutoencoder, {"corruption": "gaussian", "noise_std": 0.3}, (1, 28, 28), id="dae-gaussian"),
    pytest.param(DenoisingAutoencoder, {"corruption": "masking", "recon_loss": "bce"}, (1, 28, 28),
                 id="dae-masking-bce"),
    pytest.param(DenoisingAutoencoder, {"network": "conv", "latent_dim": 8, "corruption": "salt_and_pepper"},
                 (3, 32, 32), id="dae-conv-salt-and-pepper"),
    pytest.param(SparseAutoencoder, {"sparsity": "l1"}, (1, 28, 28), id="sae-l1"),
    pytest.param(SparseAutoencoder, {"sparsity": "kl", "recon_loss": "bce"}, (1, 28, 28), id="sae-kl-bce"),
    pytest.param(SparseAutoencoder, {"network": "conv", "latent_dim": 8, "sparsity": "topk", "k": 3}, (3, 32, 32),
                 id="sae-conv-topk"),
    pytest.param(ContractiveAutoencoder, {"penalty": "exact", "latent_dim": 8}, (1, 28, 28), id="cae-exact"),
    pytest.param(ContractiveAutoencoder, {"penalty": "sigmoid", "network": "sigmoid", "recon_loss": "bce"}, (1, 28, 28),
                 id="cae-sigmoid-bce"),
    pytest.param(ContractiveAutoencoder, {"network": "conv", "latent_dim": 8, "penalty": "stochastic"}, (3, 32, 32),
                 id="cae-conv-stochastic"),
    pytest.param(VAE, {"likelihood": "bernoulli"}, (1, 28, 28), id="vae-mlp-bernoulli"),
    pytest.param(VAE, {"network": "conv", "latent_dim": 8, "likelihood": "gaussian", "gaussian_std": None},
                 (3, 32, 32), id="vae-conv-gaussian"),
    pytest.param(VQVAE, {"latent_dim": 8, "hidden_channels": 16, "res_channels": 8, "quantizer": lambda:
                         VectorQuantizer(32, code_dim=8, kmeans_init=True, restart_threshold=0.5)}, (1, 28, 28),
                 id="vqvae-ema-kmeans-restart"),
    pytest.param(VQVAE, {"latent_dim": 8, "hidden_channels": 16, "res_channels": 8, "quantizer": lambda:
                         VectorQuantizer(32, code_dim=8, ema=False, cosine=True)}, (3, 32, 32),
                 id="vqvae-learned-cosine"),
    pytest.param(AutoencoderKL, {"network_options": {"ch": 32, "ch_mult": [1, 2], "attn_resolutions": [8]}},
                 (3, 16, 16), id="autoencoder-kl-ldm"),
    pytest.param(VQVAE, {"network": "ldm", "latent_dim": 8, "network_options": {"ch": 32, "ch_mult": [1, 2]},
                         "quantizer": lambda: VectorQuantizer(32, code_dim=8)}, (1, 16, 16), id="vqvae-ldm"),
]


def make(cls: type[AutoencoderBase], kwargs: dict, shape: tuple[int, int, int]) -> AutoencoderBase:
    seed_everything(0)
    return cls(image_shape=shape, **{k: v() if callable(v) else v for k, v in kwargs.items()})


def trainer(tmp_path: Path, **kwargs) -> Trainer:
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    return Trainer(**{**defaults, **kwargs})


@pytest.mark.parametrize(("cls", "kwargs", "shape"), VARIANTS)
class TestVariantContract:
    def test_forward_and_predict_shapes(self, cls, kwargs, shape) -> None:
        model = make(cls, kwargs, shape).eval()
        x = torch.rand(4, *shape)
        assert model(x).shape == x.shape
        out = model.predict_step((x, torch.arange(4)), 0)
        with torch.no_grad():  # the prediction agrees with forward and encode, two other paths
            torch.testing.assert_close(out["reconstruction"], model(x))
            torch.testing.assert_close(out["latent"], model.encode(x))
        assert out["latent"].shape[0] == 4
        assert torch.equal(out["label"], torch.arange(4))

    def test_batch_formats_agree(self, cls, kwargs, shape) -> None:
        model = make(cls, kwargs, shape).eval()
        x = torch.rand(4, *shape)
        losses = []
        for batch in (x, (x, torch.zeros(4)), [x], {"image": x, "label": torch.zeros(4)}):
            torch.manual_seed(1)
            losses.append(model.loss_terms(model.check_images(_images(batch)), "val").loss)
        assert all(torch.allclose(losses[0], v) for v in losses[1:])

    def test_training_reconstruction_is_detached(self, cls, kwargs, shape) -> None:
        """A training step's ``reconstruction`` holds no autograd graph while its loss does."""
        model = make(cls, kwargs, shape)
        x = torch.rand(4, *shape)
        out = model.loss_terms(x, "train")
        assert out.loss.requires_grad and out.loss.grad_fn is not None
        assert not out.reconstruction.requires_grad and out.reconstruction.shape == x.shape

    def test_bad_inputs_name_the_problem(self, cls, kwargs, shape) -> None:
        model = make(cls, kwargs, shape)
        c, h, w = shape
        with pytest.raises(ValueError, match=rf"expected images of shape \(B, {c}, {h}, {w}\), got \(2, {c + 1}"):
            model.training_step(torch.rand(2, c + 1, h, w), 0)
        with pytest.raises(ValueError, match=r"got \(2, " + str(c) + ", " + str(h + 2)):
            model.training_step(torch.rand(2, c, h + 2, w), 0)
        with pytest.raises(TypeError, match="floating-point"):
            model.training_step(torch.zeros(2, c, h, w, dtype=torch.uint8), 0)
        with pytest.raises(KeyError, match="'image'"):
            model.training_step({"img": torch.rand(2, c, h, w)}, 0)

    def test_nan_loss_is_an_error(self, cls, kwargs, shape) -> None:
        model = make(cls, kwargs, shape)
        with torch.no_grad():
            next(model.encoder.parameters()).fill_(float("nan"))
        with pytest.raises(FloatingPointError, match="non-finite train loss"):
            model.training_step(torch.rand(2, *shape), 0)

    def test_logged_val_loss_is_the_mean_of_loss_terms(self, cls, kwargs, shape, tmp_path: Path) -> None:
        """What ``Trainer.validate`` logs equals ``loss_terms`` computed by hand on the same batches (same RNG
        stream for the stochastic variants), weighted by batch size: the Lightning path adds nothing to the loss."""
        model = make(cls, kwargs, shape)
        data = FakeImageDataModule(image_shape=shape, num_train=64, val_size=40, batch_size=16)
        data.setup("fit")
        seed_everything(3)
        trainer(tmp_path).validate(model, datamodule=data, verbose=False)
        logged = model.trainer.callback_metrics
        model.eval()
        torch.manual_seed(3)
        total, count = 0.0, 0
        with torch.inference_mode():  # as Trainer.validate (the VQ-VAE's usage counts were made under it)
            for batch in data.val_dataloader():
                x = data.transform(batch[0] if isinstance(batch, (tuple, list)) else batch, training=False)
                total += model.loss_terms(x, "val").loss.item() * x.shape[0]
                count += x.shape[0]
        assert count == 40
        assert logged["val/loss"].item() == pytest.approx(total / count, rel=1e-5, abs=1e-6)

    def test_trains_and_checkpoint_round_trips(self, cls, kwargs, shape, tmp_path: Path) -> None:
        model = make(cls, kwargs, shape)
        data = FakeImageDataModule(image_shape=shape, num_train=256, val_size=64, batch_size=32)
        first = trainer(tmp_path, max_steps=1, limit_val_batches=2)
        first.validate(model, datamodule=data, verbose=False)
        start = first.callback_metrics["val/loss"].item()
        fit = trainer(tmp_path, max_epochs=6, limit_val_batches=2)
        fit.fit(model, datamodule=data)
        fit.validate(model, datamodule=data, verbose=False)
        assert fit.callback_metrics["val/loss"].item() < start
        path = tmp_path / "model.ckpt"
        fit.save_checkpoint(path)
        loaded = cls.load_from_checkpoint(path)  # built from Python with defaults: nothing else needed
        x = torch.rand(3, *shape)
        model.eval()
        loaded.eval()
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model(x))


def _images(batch):
    from lightning_ae.batch import extract_images

    return extract_images(batch)
