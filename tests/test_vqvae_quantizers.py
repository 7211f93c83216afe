"""Every quantizer inside the VQ-VAE: trained from a YAML config by the CLI, reloaded from its checkpoint alone
with the same indices; the checks VQVAE and PixelCNNPrior make on a given quantizer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import LightningDataModule, LightningModule

from lightning_ae import FSQ, LFQ, VQVAE, CodebookUsage, PixelCNNPrior, ResidualVQ, VectorQuantizer
from lightning_ae.cli import LightningAECLI

QUANTIZERS = {
    "vq_default": None,
    "vq_rotation": {"class_path": "lightning_ae.VectorQuantizer",
                    "init_args": {"num_codes": 32, "code_dim": 8, "rotation_trick": True, "kmeans_init": True}},
    "vq_factorized": {"class_path": "lightning_ae.VectorQuantizer",
                      "init_args": {"num_codes": 32, "code_dim": 8, "codebook_dim": 4, "cosine": True}},
    "fsq": {"class_path": "lightning_ae.FSQ", "init_args": {"levels": [5, 4, 3], "code_dim": 8}},
    "lfq": {"class_path": "lightning_ae.LFQ", "init_args": {"num_codes": 64, "code_dim": 8}},
    "rvq": {"class_path": "lightning_ae.ResidualVQ",
            "init_args": {"num_quantizers": 3, "num_codes": 16, "code_dim": 8, "kmeans_init": True,
                          "restart_threshold": 0.5, "quantizer_dropout": True}},
}


def config(quantizer: dict | None, root: Path) -> dict:
    model = {"latent_dim": 8, "hidden_channels": 16, "res_channels": 8, "num_res_blocks": 1}
    if quantizer is not None:
        model["quantizer"] = quantizer
    return {
        "seed_everything": 0,
        "trainer": {"max_steps": 3, "accelerator": "cpu", "devices": 1, "default_root_dir": str(root),
                    "limit_val_batches": 1, "enable_progress_bar": False, "logger": False,
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(root / "ckpt"), "filename": "last"}},
                                  {"class_path": "lightning_ae.callbacks.CodebookUsageMonitor"}]},
        "model": {"class_path": "lightning_ae.VQVAE", "init_args": model},
        "data": {"class_path": "lightning_ae.FakeImageDataModule",
                 "init_args": {"image_shape": [1, 16, 16], "num_train": 32, "val_size": 16, "batch_size": 8}},
    }


@pytest.mark.parametrize("name", QUANTIZERS)
def test_trains_from_yaml_and_reloads_from_the_checkpoint_alone(name: str, tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config(QUANTIZERS[name], tmp_path)))
    cli = LightningAECLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                         auto_configure_optimizers=False, save_config_kwargs={"overwrite": True},
                         args=["fit", "--config", str(path)])
    trained = cli.model.eval()
    expected = {None: VectorQuantizer, "lightning_ae.VectorQuantizer": VectorQuantizer, "lightning_ae.FSQ": FSQ,
                "lightning_ae.LFQ": LFQ, "lightning_ae.ResidualVQ": ResidualVQ}
    assert type(trained.quantizer) is expected[(QUANTIZERS[name] or {}).get("class_path")]
    assert "val/codebook_used_fraction" in cli.trainer.callback_metrics
    loaded = VQVAE.load_from_checkpoint(tmp_path / "ckpt" / "last.ckpt").eval()
    x = torch.rand(4, 1, 16, 16)
    with torch.no_grad():
        indices = trained.encode_indices(x)
        assert torch.equal(loaded.encode_indices(x), indices)
        torch.testing.assert_close(loaded.decode_indices(indices), trained.decode_indices(indices))
        torch.testing.assert_close(loaded(x), trained(x))


def test_lfq_terms_are_logged_as_loss_terms(monkeypatch: pytest.MonkeyPatch) -> None:
    """The VQ-VAE's loss adds LFQ's commitment and weighted entropy penalty (by hand), and its step logs them."""
    quantizer = LFQ(num_codes=16, code_dim=8, entropy_weight=0.3)
    model = VQVAE(image_shape=(1, 16, 16), latent_dim=8, hidden_channels=16, res_channels=8, quantizer=quantizer)
    x = torch.rand(2, 1, 16, 16)
    out = model.loss_terms(x, "val")
    terms = out.terms
    torch.testing.assert_close(out.loss, terms["recon"] + terms["commitment"] + 0.3 * terms["entropy_penalty"])
    torch.testing.assert_close(terms["entropy_penalty"], terms["per_sample_entropy"] - quantizer.diversity_gamma
                               * terms["codebook_entropy"])
    logged: dict[str, torch.Tensor] = {}
    monkeypatch.setattr(model, "log_dict", lambda values, **kwargs: logged.update(values))
    model.validation_step(x, 0)
    assert {"val/entropy_penalty", "val/per_sample_entropy", "val/codebook_entropy", "val/commitment"} <= set(logged)
    assert isinstance(model.codebook_usage("train"), CodebookUsage) and model.codebook_usage("train").num_codes == 16


def test_a_given_quantizer_is_checked() -> None:
    common = {"image_shape": (1, 16, 16), "hidden_channels": 16, "res_channels": 8}
    with pytest.raises(ValueError, match=r"code_dim=4 .* latent_dim=8"):
        VQVAE(latent_dim=8, quantizer=FSQ(levels=[5, 5, 5, 5]), **common)
    with pytest.raises(TypeError, match="Quantizer"):
        VQVAE(latent_dim=8, quantizer=torch.nn.Identity(), **common)


def test_residual_usage_is_counted_per_level() -> None:
    metric = CodebookUsage(num_codes=4, levels=2)
    metric.update(torch.tensor([[[0, 1]], [[2, 2]]]).reshape(1, 2, 2))  # level 0: codes 0, 1; level 1: 2, 2
    out = metric.compute()
    assert metric.counts.tolist() == [[1, 1, 0, 0], [0, 0, 2, 0]]
    assert out["perplexity"].item() == pytest.approx(1.5)  # mean of 2 and 1
    assert out["used_fraction"].item() == pytest.approx(3 / 8) and out["dead_codes"].item() == 5
    with pytest.raises(ValueError, match="levels=2"):
        metric.update(torch.tensor([0, 1]))


def test_prior_refuses_residual_codes_and_uses_the_codebook_size(tmp_path: Path) -> None:
    common = {"image_shape": (1, 16, 16), "latent_dim": 8, "hidden_channels": 16, "res_channels": 8}
    rvq = VQVAE(quantizer=ResidualVQ(num_quantizers=2, num_codes=8, code_dim=8), **common)
    with pytest.raises(ValueError, match=r"one code index per position.*ResidualVQ gives 2"):
        PixelCNNPrior("unused.ckpt", vqvae_hparams=dict(rvq.hparams), image_shape=(1, 16, 16))
    fsq = VQVAE(quantizer=FSQ(levels=[3, 3], code_dim=8), **common)
    prior = PixelCNNPrior("unused.ckpt", vqvae_hparams=dict(fsq.hparams), image_shape=(1, 16, 16), channels=8,
                          num_layers=2)
    assert prior(torch.zeros(1, *prior.grid_shape, dtype=torch.long)).shape[1] == 9
