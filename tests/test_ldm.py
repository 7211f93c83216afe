"""The latent-diffusion networks, the AutoencoderKL variant and the two-way diffusers interop: the same parameters
and outputs as diffusers' models, the loss against a hand computation, the measured scaling factor, exports that
diffusers loads, fine-tuning from a diffusers folder from the command line, and one-line refusals."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from lightning_ae import FSQ, VAE, VQVAE, AutoencoderKL, FakeImageDataModule, VectorQuantizer
from lightning_ae.cli import main
from lightning_ae.interop.diffusers import (
    DiffusersError,
    diffusers_config,
    export_diffusers,
    load_diffusers_weights,
    to_diffusers_state_dict,
)
from lightning_ae.models.autoencoder_kl import ldm_nll
from lightning_ae.nets import LDMDecoder, LDMEncoder

diffusers = pytest.importorskip("diffusers")

SMALL = {"ch": 32, "ch_mult": [1, 2, 2], "num_res_blocks": 1, "attn_resolutions": [16]}
ATOL = 1e-5  # fp32, as the export promises


def small_kl(**kwargs: object) -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(image_shape=(3, 32, 32), pixel_range=(-1.0, 1.0), network_options=SMALL, **kwargs)


def diffusers_twin(model: torch.nn.Module) -> torch.nn.Module:
    name, config = diffusers_config(model)
    twin = getattr(diffusers, name)(**config)
    twin.load_state_dict(to_diffusers_state_dict(model), strict=True)
    return twin.eval()


def images(n: int = 2, shape: tuple[int, int, int] = (3, 32, 32)) -> torch.Tensor:
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(1)) * 2 - 1


# ---- the networks ----------------------------------------------------------------------------------------
def test_stable_diffusion_layout_has_diffusers_parameter_count() -> None:
    sd = {"ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": []}
    with torch.device("meta"):
        ours = AutoencoderKL(image_shape=(3, 256, 256), network_options=sd)
        theirs = diffusers.AutoencoderKL(block_out_channels=[128, 256, 512, 512], layers_per_block=2,
                                         down_block_types=["DownEncoderBlock2D"] * 4,
                                         up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4)
    count = sum(p.numel() for p in [*ours.encoder.parameters(), *ours.decoder.parameters()])
    assert count == sum(p.numel() for p in theirs.parameters()) == 83_653_863


@pytest.mark.parametrize("attn", [[], [16], [32, 8]])
def test_kl_model_equals_diffusers_autoencoder_kl(attn: list[int]) -> None:
    model = AutoencoderKL(image_shape=(3, 32, 32), network_options={**SMALL, "attn_resolutions": attn}).eval()
    twin = diffusers_twin(model)
    x = images()
    with torch.no_grad():
        mean = model.encode(x)
        assert mean.shape == (2, 4, 8, 8)
        torch.testing.assert_close(twin.encode(x).latent_dist.mean, mean, atol=ATOL, rtol=0)
        torch.testing.assert_close(twin.decode(mean).sample, model.decode(mean), atol=ATOL, rtol=0)


def test_vq_model_equals_diffusers_vq_model() -> None:
    torch.manual_seed(0)
    model = VQVAE(network="ldm", latent_dim=8, image_shape=(3, 32, 32), network_options=SMALL,
                  quantizer=VectorQuantizer(64, code_dim=8, ema=False)).eval()
    twin = diffusers_twin(model)
    x = images()
    with torch.no_grad():
        z = model.encode(x)
        torch.testing.assert_close(twin.encode(x).latents, z, atol=ATOL, rtol=0)
        torch.testing.assert_close(twin.decode(z).sample, model.decode(z), atol=ATOL, rtol=0)


def test_ldm_options_are_checked_by_name() -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        LDMEncoder(ch=48, ch_mult=[1])
    with pytest.raises(ValueError, match="attn_resolutions"):
        LDMDecoder(resolution=32, ch_mult=[1, 2], attn_resolutions=[4])
    with pytest.raises(ValueError, match=r"unknown network_options.*'channels'"):
        AutoencoderKL(image_shape=(3, 32, 32), network_options={"channels": 64})
    with pytest.raises(ValueError, match="network='ldm' only"):
        VAE(network="conv", network_options={"ch": 32})


# ---- the variant ----------------------------------------------------------------------------------------
def test_ldm_nll_against_hand_computation() -> None:
    output, target = torch.tensor([[[[0.5, -1.0]]]]), torch.tensor([[[[0.0, 1.0]]]])
    logvar = torch.tensor(math.log(4.0))
    nll, rec = ldm_nll(output, target, logvar, "l1")
    assert nll.item() == pytest.approx((0.5 + 2.0) / 4.0 + 2 * math.log(4.0))
    nll2, _ = ldm_nll(output, target, logvar, "l2")
    assert nll2.item() == pytest.approx((0.25 + 4.0) / 4.0 + 2 * math.log(4.0))
    torch.testing.assert_close(rec, torch.tensor([[[[0.5, 2.0]]]]))


def test_loss_is_nll_plus_weighted_kl_of_the_spatial_posterior() -> None:
    model = small_kl(kl_weight=0.5)
    x = images()
    torch.manual_seed(3)
    out = model.loss_terms(x, "train")
    q = model.posterior(x)
    kl = (0.5 * (q.mean.pow(2) + q.logvar.exp() - 1 - q.logvar)).sum(1).mean()  # Kingma & Welling, appendix B
    torch.testing.assert_close(out.terms["kl"], kl)
    torch.testing.assert_close(out.loss, out.terms["nll"] + 0.5 * kl)
    assert q.mean.shape == (2, 4 * 8 * 8) and set(out.terms) >= {"nll", "kl", "rec", "logvar"}
    out.loss.backward()
    assert model.logvar.grad is not None  # learned (latent diffusion leaves it out of its optimizer)
    assert small_kl(learn_logvar=False).logvar.requires_grad is False


def test_scaling_factor_is_one_over_the_std_of_the_training_latents(tmp_path: Path) -> None:
    from lightning.pytorch import Trainer

    model = small_kl(optimizer=lambda p: torch.optim.SGD(p, lr=0.0))  # frozen weights: the latents are known
    data = FakeImageDataModule(image_shape=(3, 32, 32), num_train=32, val_size=8, batch_size=8, pixel_range=(-1, 1))
    Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
            default_root_dir=tmp_path).fit(model, data)
    model.eval()
    with torch.no_grad():
        batches = [data.on_after_batch_transfer(b, 0) for b in data.train_dataloader()]
        latents = torch.cat([model.encode(b[0] if isinstance(b, tuple | list) else b) for b in batches]).double()
    assert model.scaling_factor.item() == pytest.approx(1.0 / latents.std().item(), rel=1e-4)
    assert small_kl(scaling_factor=0.18215).scaling_factor.item() == pytest.approx(0.18215)
    assert "scaling_factor" in model.state_dict()


# ---- diffusers interop ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("trained", [False, True], ids=["random", "trained"])
def test_export_loads_in_diffusers_and_reproduces_the_model(trained: bool, tmp_path: Path) -> None:
    model = small_kl(scaling_factor=0.3)
    if trained:  # a few steps, so the weights are no longer the initialisation's
        optimizer = torch.optim.Adam(model.parameters(), 1e-3)
        for _ in range(3):
            optimizer.zero_grad()
            model.loss_terms(images(4), "train").loss.backward()
            optimizer.step()
    export_diffusers(model.eval(), tmp_path / "vae")
    loaded = diffusers.AutoencoderKL.from_pretrained(tmp_path / "vae").eval()
    assert loaded.config.scaling_factor == pytest.approx(0.3)
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(x).latent_dist.mean, model.encode(x), atol=ATOL, rtol=0)
        z = model.encode(x)
        torch.testing.assert_close(loaded.decode(z).sample, model.decode(z), atol=ATOL, rtol=0)


def test_from_diffusers_reproduces_a_saved_diffusers_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    theirs = diffusers.AutoencoderKL(block_out_channels=[32, 64], layers_per_block=1, latent_channels=4,
                                     down_block_types=["DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
                                     up_block_types=["AttnUpDecoderBlock2D", "UpDecoderBlock2D"], sample_size=32,
                                     scaling_factor=0.25).eval()
    theirs.save_pretrained(tmp_path / "sd")
    ours = AutoencoderKL.from_diffusers(tmp_path / "sd").eval()
    assert ours.network_options["attn_resolutions"] == [16] and ours.scaling_factor.item() == 0.25
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x), theirs.encode(x).latent_dist.mean, atol=ATOL, rtol=0)
        torch.testing.assert_close(ours(x), theirs(x).sample, atol=ATOL, rtol=0)
    other = small_kl()
    with pytest.raises(DiffusersError, match=r"config.json has block_out_channels=\[32, 64\]"):
        load_diffusers_weights(other, tmp_path / "sd")


def test_models_without_diffusers_counterpart_are_refused_in_one_line(tmp_path: Path) -> None:
    cases = [
        (VQVAE(network="ldm", latent_dim=3, image_shape=(3, 32, 32), network_options=SMALL,
               quantizer=FSQ(levels=[4, 3, 2], code_dim=3)), "FSQ has no counterpart"),
        (VAE(network="conv", latent_dim=4, image_shape=(3, 32, 32)), "LDM networks"),
        (VAE(network="ldm", latent_dim=4, image_shape=(3, 32, 32), likelihood="gaussian", gaussian_std=None),
         "per-pixel variance"),
    ]
    for model, message in cases:
        with pytest.raises(DiffusersError, match=message) as err:
            export_diffusers(model, tmp_path / "out")
        assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_pickled_diffusers_weights_are_not_read(tmp_path: Path) -> None:
    folder = tmp_path / "vae"
    export_diffusers(small_kl(), folder)
    (folder / "diffusion_pytorch_model.safetensors").rename(folder / "diffusion_pytorch_model.bin")
    with pytest.raises(DiffusersError, match="is a pickle, which is not read"):
        AutoencoderKL.from_diffusers(folder)


def _fit_args(config: Path, folder: Path, data: Path, tmp: Path) -> list[str]:
    return ["fit", "--config", str(config), "--data.init_args.root", str(data), "--data.init_args.data_dir", str(tmp),
            "--data.init_args.image_size", "32", "--data.init_args.val_size", "4",
            "--model.init_args.init_from_diffusers", str(folder),
            "--model.init_args.network_options", json.dumps({**SMALL, "resolution": 32}),
            "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1", "--trainer.accelerator", "cpu",
            "--trainer.devices", "1"]


def test_finetune_config_starts_from_the_diffusers_weights(tiny_image_folder: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """configs/folder/finetune_sd_vae.yaml at a small layout: a random diffusers model saved with save_pretrained
    is fine-tuned for two steps from the command line, and the result exports back to diffusers."""
    config = Path(__file__).parents[1] / "configs" / "folder" / "finetune_sd_vae.yaml"
    torch.manual_seed(0)
    theirs = diffusers.AutoencoderKL(block_out_channels=[32, 64, 64], layers_per_block=1, latent_channels=4,
                                     down_block_types=["DownEncoderBlock2D", "AttnDownEncoderBlock2D",
                                                       "DownEncoderBlock2D"],
                                     up_block_types=["UpDecoderBlock2D", "AttnUpDecoderBlock2D", "UpDecoderBlock2D"],
                                     sample_size=32, scaling_factor=0.18215)
    theirs.save_pretrained(tmp_path / "sd-vae")
    monkeypatch.chdir(tmp_path)
    main(_fit_args(config, tmp_path / "sd-vae", tiny_image_folder, tmp_path))
    ckpt = tmp_path / "checkpoints" / "folder_finetune_sd_vae" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    start = theirs.state_dict()["encoder.conv_in.weight"]
    moved = (state["encoder.conv_in.weight"] - start).abs().max().item()
    assert 0 < moved < 1e-3  # two Adam steps of lr 1e-5 from the diffusers weights, not a fresh initialisation
    assert state["scaling_factor"].item() == pytest.approx(0.18215)
    main(["export", "--ckpt_path", str(ckpt), "--format", "diffusers", "--out", str(tmp_path / "mine")])
    assert "exported" in capsys.readouterr().out
    assert diffusers.AutoencoderKL.from_pretrained(tmp_path / "mine").config.scaling_factor == pytest.approx(0.18215)

    (tmp_path / "sd-vae" / "config.json").write_text(json.dumps({**json.loads(
        (tmp_path / "sd-vae" / "config.json").read_text()), "layers_per_block": 2}))
    with pytest.raises(SystemExit) as exc:
        main([*_fit_args(config, tmp_path / "sd-vae", tiny_image_folder, tmp_path), "--overwrite", "true"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "layers_per_block=2" in err and len(err.splitlines()) == 1


def test_bf16_autocast_keeps_the_loss_sums_in_fp32() -> None:
    model = small_kl()
    x = images(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.loss_terms(x, "train")
    assert out.loss.dtype == torch.float32 and out.terms["kl"].dtype == torch.float32
    torch.manual_seed(0)
    reference = model.loss_terms(x, "train").loss
    assert out.loss.item() == pytest.approx(reference.item(), rel=0.05)


@pytest.mark.parametrize("quantizer", ["vq", "vq-rotation", "vq-factorized", "fsq", "lfq", "rvq"])
def test_vqvae_with_the_ldm_networks_takes_every_quantizer(quantizer: str) -> None:
    from lightning_ae import LFQ, ResidualVQ

    make = {"vq": lambda: VectorQuantizer(16, code_dim=8), "vq-rotation": lambda: VectorQuantizer(
        16, code_dim=8, rotation_trick=True), "vq-factorized": lambda: VectorQuantizer(16, code_dim=8, codebook_dim=4),
            "fsq": lambda: FSQ(levels=[4, 3, 2], code_dim=8), "lfq": lambda: LFQ(num_codes=16, code_dim=8),
            "rvq": lambda: ResidualVQ(num_quantizers=2, num_codes=16, code_dim=8)}[quantizer]
    torch.manual_seed(0)
    model = VQVAE(network="ldm", latent_dim=8, image_shape=(3, 32, 32), network_options=SMALL, quantizer=make())
    x = images()
    out = model.loss_terms(x, "train")
    out.loss.backward()
    assert out.decoded.shape == x.shape and model.encoder.conv_in.weight.grad is not None
    indices = model.encode_indices(x)
    assert indices.shape[-2:] == (8, 8)
    assert model.decode_indices(indices).shape == x.shape


def test_a_trained_autoencoder_kl_folder_loads_through_load_model(tmp_path: Path) -> None:
    """The generic loader (evaluate, export, fd_c10.py) parses the folder's config against the class: the VAE
    options AutoencoderKL fixes must not get in the way."""
    from lightning_ae.pretrained import load_model

    model = small_kl(scaling_factor=0.4).eval()
    loaded = load_model(str(model.save_pretrained(tmp_path / "kl"))).eval()
    assert type(loaded) is AutoencoderKL and loaded.scaling_factor.item() == pytest.approx(0.4)
    x = images()
    torch.testing.assert_close(loaded(x), model(x))
