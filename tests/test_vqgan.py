"""VQGAN and the adversarial AutoencoderKL: manual optimization of a generator and a discriminator that starts at
``disc_start``, accumulation, clipping, refusals of what cannot work, DDP ranks that stay bit-identical, and the
generator alone in exports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_ae import FSQ, VQGAN, AutoencoderKL, FakeImageDataModule, VectorQuantizer
from lightning_ae.export import export_model
from lightning_ae.nets import PatchGANDiscriminator

NET = {"ch": 32, "ch_mult": [1, 2]}


def vqgan(**kwargs: object) -> VQGAN:
    seed_everything(0)
    options = {"latent_dim": 8, "quantizer": VectorQuantizer(16, code_dim=8), "disc_start": 3,
               "discriminator": PatchGANDiscriminator(ndf=16, n_layers=2), **kwargs}
    return VQGAN(image_shape=(3, 16, 16), network_options=NET, **options)


def fit(model: torch.nn.Module, tmp_path: Path, steps: int, **trainer: object) -> Trainer:
    data = FakeImageDataModule(image_shape=(3, 16, 16), num_train=72, val_size=8, batch_size=8)
    t = Trainer(max_steps=steps, accelerator="cpu", logger=CSVLogger(tmp_path), log_every_n_steps=1,
                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                limit_val_batches=0, **trainer)
    t.fit(model, datamodule=data)
    return t


def logged(tmp_path: Path) -> list[dict[str, str]]:
    import csv

    (path,) = tmp_path.rglob("metrics.csv")
    return list(csv.DictReader(path.open()))


def test_discriminator_starts_at_disc_start(tmp_path: Path) -> None:
    model = vqgan(disc_start=3)
    start = {k: v.clone() for k, v in model.discriminator.state_dict().items()}
    t = fit(model, tmp_path, 5)
    assert t.global_step == 5  # generator steps: the discriminator's own steps are not counted
    rows = {int(r["step"]): r for r in logged(tmp_path) if r.get("train/loss")}
    assert all(not rows[s].get("train/g_adv") for s in (0, 1, 2))  # before disc_start: no adversarial term
    assert all(rows[s]["train/g_adv"] and rows[s]["train/d_loss"] for s in (3, 4))
    assert 0 <= float(rows[4]["train/adaptive_weight"]) <= 1e4
    moved = [not torch.equal(start[k], v) for k, v in model.discriminator.state_dict().items()]
    assert any(moved)  # trained after disc_start


def test_no_discriminator_step_before_disc_start(tmp_path: Path) -> None:
    model = vqgan(disc_start=100)
    start = {k: v.clone() for k, v in model.discriminator.state_dict().items()}
    fit(model, tmp_path, 3)
    assert all(torch.equal(start[k], v) for k, v in model.discriminator.state_dict().items())


def test_accumulation_steps_every_n_batches(tmp_path: Path) -> None:
    t = fit(vqgan(accumulate_grad_batches=3, disc_start=0), tmp_path, 2)
    assert t.global_step == 2 and t.fit_loop.total_batch_idx + 1 == 6


@pytest.mark.parametrize(("trainer", "message"), [
    ({"accumulate_grad_batches": 2}, "accumulat"), ({"gradient_clip_val": 1.0}, "clipping")])
def test_what_manual_optimization_cannot_do_is_refused(tmp_path: Path, trainer: dict, message: str) -> None:
    with pytest.raises(MisconfigurationException, match=message):  # Lightning's, before any step
        fit(vqgan(), tmp_path, 1, **trainer)


def test_bf16_and_every_quantizer(tmp_path: Path) -> None:
    model = vqgan(quantizer=FSQ(levels=[4, 3, 2], code_dim=8), disc_start=1, r1_weight=0.1)
    fit(model, tmp_path, 3, precision="bf16-mixed")
    assert torch.isfinite(torch.tensor([float(r["train/loss"]) for r in logged(tmp_path) if r.get("train/loss")])).all()


def test_generator_alone_is_exported(tmp_path: Path) -> None:
    model = vqgan()
    export_model(model, tmp_path / "onnx", format="torchscript")
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == ["decoder.pt", "encoder.pt", "export.json"]
    kl = AutoencoderKL(image_shape=(3, 16, 16), network_options=NET, discriminator=PatchGANDiscriminator(ndf=16))
    from lightning_ae.interop.diffusers import to_diffusers_state_dict

    assert not any("discriminator" in k for k in to_diffusers_state_dict(kl))
    assert any(k.startswith("discriminator.") for k in kl.state_dict())  # kept in checkpoints


def test_adversarial_autoencoder_kl_adds_the_perceptual_term_per_pixel(tmp_path: Path) -> None:
    class Half(torch.nn.Module):  # a stand-in perceptual distance: 0.5 for every image
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return torch.full((a.shape[0],), 0.5)

    torch.manual_seed(0)
    model = AutoencoderKL(image_shape=(3, 16, 16), network_options=NET, perceptual=Half(), perceptual_weight=2.0,
                          discriminator=PatchGANDiscriminator(ndf=16), disc_start=10)
    x = torch.rand(2, 3, 16, 16)
    torch.manual_seed(1)
    out = model.loss_terms(x, "train")
    loss, rec = model.adversarial_reconstruction(out, x, model.perceptual_term(out.decoded, x))
    extra = 2.0 * 0.5 * 3 * 16 * 16 / torch.exp(model.logvar)  # latent diffusion: p joins every pixel's error
    torch.testing.assert_close(loss, out.loss + extra)
    torch.testing.assert_close(rec, out.terms["nll"] + extra)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp_find_unused_parameters_true", "ddp"])
def test_ddp_ranks_stay_bit_identical(strategy: str, tmp_path: Path) -> None:
    """2 ranks, disc_start inside the run: it finishes (no hang, no unused-parameter error) and both ranks hold
    bit-identical generator and discriminator weights; plain ddp is refused in one line before any step."""
    script = Path(__file__).with_name("ddp_gan_script.py")
    proc = subprocess.run([sys.executable, str(script), str(tmp_path), strategy], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    if strategy == "ddp":
        assert proc.returncode != 0 and "use --trainer.strategy ddp_find_unused_parameters_true" in proc.stderr
        return
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["step"] == r1["step"] == 5
    assert any(k.startswith("discriminator.") for k in r0["state"])
    for key, value in r0["state"].items():
        assert torch.equal(value, r1["state"][key]), key


def test_lpips_perceptual_is_rebuilt_from_its_files_not_stored(tmp_path: Path) -> None:
    from lightning_ae.perceptual import LPIPS
    from tests.test_evaluation import write_lpips_files

    vgg, heads = write_lpips_files(tmp_path / "lpips")
    model = vqgan(perceptual=LPIPS(str(vgg), str(heads)), disc_start=1)
    t = fit(model, tmp_path, 2)
    assert any(r.get("train/perceptual") for r in logged(tmp_path))
    assert not any("perceptual" in k or k.startswith("_perceptual") for k in model.state_dict())
    t.save_checkpoint(tmp_path / "m.ckpt")
    again = VQGAN.load_from_checkpoint(tmp_path / "m.ckpt", weights_only=True)
    torch.testing.assert_close(again.perceptual.heads[0].data, model.perceptual.heads[0].data)


def test_the_models_clipping_and_accumulation_need_a_discriminator() -> None:
    """One owner per option: without a discriminator, clipping and accumulation are the Trainer's."""
    with pytest.raises(ValueError, match="without one use the Trainer's gradient_clip_val"):
        VQGAN(image_shape=(3, 16, 16), latent_dim=8, network_options=NET, gradient_clip_norm=1.0)
