"""TransformerPrior and CodeDataModule: the factorization (a normalised distribution, causal), the KV cache (the
same codes as recomputing the prefix), guidance and filtering against hand computations, every quantizer, the code
cache (extracted once, keyed by the model, atomic, never the encoder in a step), checkpoints, folders and bf16."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer, seed_everything

from lightning_ae import (
    FSQ,
    LFQ,
    VQGAN,
    VQVAE,
    CodeDataModule,
    FakeImageDataModule,
    PixelCNNPrior,
    ResidualVQ,
    TransformerPrior,
    VectorQuantizer,
)
from lightning_ae.data.formats import DatasetFileError
from lightning_ae.nets.transformer import PriorTransformer, filter_logits

VQ = {"image_shape": (1, 28, 28), "latent_dim": 8, "hidden_channels": 16, "res_channels": 8}
QUANTIZERS = {
    "vq": lambda: VectorQuantizer(16, code_dim=8),
    "vq-rotation": lambda: VectorQuantizer(16, code_dim=8, rotation_trick=True),
    "vq-factorized": lambda: VectorQuantizer(16, code_dim=8, codebook_dim=4, cosine=True),
    "fsq": lambda: FSQ(levels=[4, 3, 2], code_dim=8),
    "lfq": lambda: LFQ(num_codes=16, code_dim=8),
    "rvq": lambda: ResidualVQ(num_quantizers=3, num_codes=16, code_dim=8),
}
SMALL = {"dim": 32, "num_layers": 2, "num_heads": 4}


def _data(**kwargs: object) -> FakeImageDataModule:
    return FakeImageDataModule(image_shape=(1, 28, 28), num_train=96, num_test=32, val_size=32, batch_size=16,
                               **kwargs)  # type: ignore[arg-type]


def _trainer(root: Path, **kwargs: object) -> Trainer:
    options = {"accelerator": "cpu", "devices": 1, "max_steps": 3, "logger": False, "enable_checkpointing": False,
               "enable_progress_bar": False, "enable_model_summary": False, "limit_val_batches": 1,
               "default_root_dir": root, "num_sanity_val_steps": 0} | kwargs
    return Trainer(**options)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A model folder of a (randomly initialised) VQ-VAE per quantizer."""
    root = tmp_path_factory.mktemp("vq")
    out = {}
    for name, quantizer in QUANTIZERS.items():
        torch.manual_seed(0)
        out[name] = VQVAE(quantizer=quantizer(), **VQ).save_pretrained(root / name)
    return out


# ---- the network ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("levels", [1, 2])
@pytest.mark.parametrize("num_classes", [0, 3])
def test_the_factorization_is_a_normalised_distribution(levels: int, num_classes: int) -> None:
    """Summed over every sequence of 2 positions x ``levels`` indices over 3 codes, the model's probability is 1:
    each factor conditions on exactly the indices before it (teacher forcing shifts correctly, the depth
    transformer too)."""
    torch.manual_seed(0)
    net = PriorTransformer(3, length=2, levels=levels, num_classes=num_classes, dim=16, num_layers=2, num_heads=2,
                           depth_layers=1).double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.5)  # far from uniform, so a leak of the future shows
    sequences = torch.tensor(list(itertools.product(range(3), repeat=2 * levels))).view(-1, 2, levels)
    labels = None if not num_classes else torch.full((len(sequences),), 1)
    with torch.no_grad():
        logp = net(sequences, labels).log_softmax(-1)  # (N, 2, Q, 3)
    joint = logp.gather(-1, sequences[..., None]).sum((1, 2, 3)).exp()
    assert joint.sum().item() == pytest.approx(1.0, abs=1e-10)


def test_logits_are_causal() -> None:
    """The logits of index (t, q) do not change when any index at or after it changes."""
    torch.manual_seed(0)
    net = PriorTransformer(8, length=5, levels=3, dim=16, num_layers=2, num_heads=2).eval()
    codes = torch.randint(8, (1, 5, 3))
    with torch.no_grad():
        base = net(codes)
        for t, q in itertools.product(range(5), range(3)):
            changed = codes.clone()
            changed[0, t, q] = (changed[0, t, q] + 1) % 8
            out = net(changed)
            before = [(s, r) for s in range(5) for r in range(3) if (s, r) <= (t, q)]
            for s, r in before:
                torch.testing.assert_close(out[0, s, r], base[0, s, r])
            after = (t, q + 1) if q < 2 else (t + 1, 0)
            if after[0] < 5:
                assert not torch.allclose(out[0, after[0], after[1]], base[0, after[0], after[1]])


@pytest.mark.parametrize("positions", ["learned", "rope"])
@pytest.mark.parametrize("levels", [1, 3])
def test_the_kv_cache_gives_the_same_codes(positions: str, levels: int) -> None:
    """Cached and recomputed prefixes draw bit-equal codes from the same generator, with guidance and filtering."""
    torch.manual_seed(0)
    net = PriorTransformer(32, length=12, levels=levels, num_classes=4, dim=32, num_layers=3, num_heads=4,
                           positions=positions).eval()  # type: ignore[arg-type]
    labels = torch.tensor([0, 1, 2, 3, 1])
    for options in ({}, {"cfg_scale": 3.0, "top_k": 10}, {"top_p": 0.8, "temperature": 0.7}):
        a = net.sample(5, labels, generator=torch.Generator().manual_seed(1), **options)  # type: ignore[arg-type]
        b = net.sample(5, labels, generator=torch.Generator().manual_seed(1), use_cache=False,
                       **options)  # type: ignore[arg-type]
        assert a.shape == (5, 12, levels)
        assert torch.equal(a, b), options


def test_guided_greedy_decoding_matches_a_hand_computation() -> None:
    """``top_k=1`` with ``cfg_scale`` s picks argmax(u + s (c - u)) of the full forward passes, position by
    position (Ho and Salimans 2022, eq. 6)."""
    torch.manual_seed(0)
    net = PriorTransformer(16, length=6, num_classes=3, dim=32, num_layers=2, num_heads=4).eval()
    labels, s = torch.tensor([0, 2]), 2.5
    got = net.sample(2, labels, top_k=1, cfg_scale=s)
    codes = torch.zeros(2, 6, 1, dtype=torch.long)
    with torch.no_grad():
        for t in range(6):
            cond = net(codes, labels)[:, t, 0]
            uncond = net(codes, torch.full_like(labels, net.null_class))[:, t, 0]
            codes[:, t, 0] = (uncond + s * (cond - uncond)).argmax(-1)
    assert torch.equal(got, codes)


def test_filtering_keeps_the_top_k_and_the_nucleus() -> None:
    logits = torch.tensor([[math.log(p) for p in (0.5, 0.3, 0.15, 0.05)]])
    keep = torch.isfinite(filter_logits(logits, top_k=2))
    assert keep.tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.8)).tolist() == [[True, True, False, False]]  # 0.5 + 0.3
    assert torch.isfinite(filter_logits(logits, top_p=0.81)).tolist() == [[True, True, True, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.1)).tolist() == [[True, False, False, False]]
    shuffled = logits[:, [2, 0, 3, 1]]
    assert torch.isfinite(filter_logits(shuffled, top_p=0.8)).tolist() == [[False, True, False, True]]


def test_sampling_options_are_checked() -> None:
    net = PriorTransformer(8, length=4, dim=16, num_layers=1, num_heads=2)
    for options, match in (({"temperature": 0.0}, "temperature"), ({"top_k": 9}, "top_k"), ({"top_p": 0.0}, "top_p"),
                           ({"cfg_scale": 2.0}, "cfg_scale")):
        with pytest.raises(ValueError, match=match):
            net.sample(2, **options)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unconditional"):
        net.sample(2, torch.tensor([0, 1]))


def test_tied_embeddings_share_the_weight() -> None:
    tied = PriorTransformer(8, length=4, dim=16, num_layers=1, num_heads=2)
    untied = PriorTransformer(8, length=4, dim=16, num_layers=1, num_heads=2, tie_embeddings=False)
    assert tied.head is None and untied.head is not None
    count = sum(p.numel() for p in untied.parameters()) - sum(p.numel() for p in tied.parameters())
    assert count == 8 * 16


# ---- the model -----------------------------------------------------------------------------------------------------
def test_nll_is_the_cross_entropy_and_bits_follow(folders: dict[str, Path]) -> None:
    prior = TransformerPrior(str(folders["vq"]), **SMALL)
    codes = torch.randint(16, (3, 7, 7))
    logits = prior.logits(codes)  # (B, K, 7, 7)
    hand = -logits.log_softmax(1).gather(1, codes[:, None]).mean()
    nats = prior.nll(codes)
    torch.testing.assert_close(nats, hand)
    assert prior.bits_per_code(nats).item() == pytest.approx(nats.item() / math.log(2))
    assert prior.bits_per_dim(nats).item() == pytest.approx(nats.item() * 49 / (math.log(2) * 784))


def test_class_dropout_replaces_labels_at_its_rate(folders: dict[str, Path]) -> None:
    prior = TransformerPrior(str(folders["vq"]), num_classes=10, class_dropout=0.3, **SMALL)
    labels = torch.randint(10, (20000,))
    dropped = prior.conditioning(labels) == prior.transformer.null_class
    assert dropped.float().mean().item() == pytest.approx(0.3, abs=0.02)
    kept = prior.conditioning(labels)
    assert torch.equal(kept[kept != 10], labels[kept != 10])
    assert TransformerPrior(str(folders["vq"]), num_classes=10, class_conditional=False, **SMALL).num_classes is None


@pytest.mark.parametrize("quantizer", list(QUANTIZERS))
def test_every_quantizer_trains_and_samples(quantizer: str, folders: dict[str, Path], tmp_path: Path) -> None:
    seed_everything(0)
    prior = TransformerPrior(str(folders[quantizer]), num_classes=10, **SMALL)
    before = [p.detach().clone() for p in prior.transformer.parameters()]
    trainer = _trainer(tmp_path)
    trainer.fit(prior, datamodule=CodeDataModule(_data(), cache_dir=str(tmp_path / "codes"), batch_size=16))
    assert any(not torch.equal(a, b) for a, b in zip(before, prior.transformer.parameters(), strict=True))
    metrics = trainer.validate(prior, datamodule=CodeDataModule(_data(), cache_dir=str(tmp_path / "codes")),
                               verbose=False)[0]
    assert metrics["val/bits_per_code"] == pytest.approx(metrics["val/loss"] / math.log(2), rel=1e-5)
    images = prior.sample(4, labels=torch.arange(4), cfg_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert images.shape == (4, 1, 28, 28) and torch.isfinite(images).all()
    grid = (3, 7, 7) if quantizer == "rvq" else (7, 7)
    indices = prior.sample_indices(2, torch.Generator().manual_seed(0))
    assert indices.shape == (2, *grid) and int(indices.max()) < prior.codebook_size


def test_pixelcnn_refusal_of_residual_codes_points_at_the_transformer(folders: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="TransformerPrior"):
        PixelCNNPrior(str(folders["rvq"]))


def test_a_vqgan_checkpoint_is_a_frozen_model(tmp_path: Path) -> None:
    """A prior over a VQGAN read from a Lightning checkpoint (its class comes from the hyperparameters)."""
    from lightning_ae.nets import PatchGANDiscriminator

    vqgan = VQGAN(quantizer=VectorQuantizer(16, code_dim=8), discriminator=PatchGANDiscriminator(1, ndf=8, n_layers=1),
                  **VQ)
    _trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(vqgan, datamodule=_data())
    path = tmp_path / "vqgan.ckpt"
    vqgan.trainer.save_checkpoint(path)
    prior = TransformerPrior(str(path), **SMALL)
    assert type(prior.vqvae) is VQGAN
    for key, value in vqgan.state_dict().items():
        assert torch.equal(prior.vqvae.state_dict()[key], value), key


def test_checkpoint_and_model_folder_round_trips(folders: dict[str, Path], tmp_path: Path) -> None:
    seed_everything(0)
    prior = TransformerPrior(str(folders["rvq"]), num_classes=10, positions="rope", **SMALL)
    trainer = _trainer(tmp_path, max_steps=2)
    trainer.fit(prior, datamodule=CodeDataModule(_data(), cache_dir=str(tmp_path / "codes")))
    trainer.save_checkpoint(tmp_path / "prior.ckpt")
    prior.eval()
    codes, labels = torch.randint(16, (2, 3, 7, 7)), torch.tensor([1, 7])
    expected = prior(codes, labels)
    loaded = TransformerPrior.load_from_checkpoint(tmp_path / "prior.ckpt", weights_only=True).eval()
    torch.testing.assert_close(loaded(codes, labels), expected)
    prior.save_pretrained(tmp_path / "folder")
    assert (tmp_path / "folder" / "vqvae" / "config.json").is_file()
    again = TransformerPrior.from_pretrained(tmp_path / "folder")
    torch.testing.assert_close(again(codes, labels), expected)
    g = torch.Generator()
    torch.testing.assert_close(again.sample(2, g.manual_seed(0), labels=labels), prior.sample(2, g.manual_seed(0),
                                                                                              labels=labels))


def test_bf16_step_matches_fp32(folders: dict[str, Path]) -> None:
    """Under bf16 autocast the NLL (fp32 cross-entropy of bf16 logits) is within 2% of the fp32 one."""
    torch.manual_seed(0)
    prior = TransformerPrior(str(folders["vq"]), num_classes=10, **SMALL)
    codes, labels = torch.randint(16, (8, 7, 7)), torch.randint(10, (8,))
    fp32 = prior.nll(codes, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = prior.nll(codes, labels)
    assert bf16.dtype == torch.float32
    assert bf16.item() == pytest.approx(fp32.item(), rel=0.02)


# ---- the code cache ------------------------------------------------------------------------------------------------
def test_codes_are_extracted_once_and_keyed_by_the_model(folders: dict[str, Path], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "codes"
    prior = TransformerPrior(str(folders["vq"]), num_classes=10, **SMALL)
    calls = []
    original = VQVAE.encode_indices
    monkeypatch.setattr(VQVAE, "encode_indices", lambda self, x: calls.append(len(x)) or original(self, x))
    _trainer(tmp_path).fit(prior, datamodule=CodeDataModule(_data(), cache_dir=str(cache)))
    assert sum(calls) == 64 + 32  # train and val, once each, none in the steps
    folders_made = sorted(p.name.split("-")[0] for p in cache.iterdir())
    assert folders_made == ["train", "val"]
    data = _data()
    data.setup("fit")
    (train,) = cache.glob("train-*")
    cached = torch.from_numpy(np.load(train / "codes.npy")).long()
    expected = original(prior.vqvae, data.transform(data.train_set.images, training=False))
    assert torch.equal(cached, expected)
    labels = data.train_set.__getitems__(list(range(64)))[1]  # the labels the image batches carry
    assert torch.equal(torch.from_numpy(np.load(train / "labels.npy")), labels)
    assert json.loads((train / "meta.json").read_text())["count"] == 64

    other = TransformerPrior(str(folders["vq"]), num_classes=10, **SMALL)
    calls.clear()
    _trainer(tmp_path).fit(prior, datamodule=CodeDataModule(_data(), cache_dir=str(cache)))
    assert calls == []  # a second run reads the cache
    with torch.no_grad():
        next(other.vqvae.encoder.parameters()).add_(1.0)
    _trainer(tmp_path).fit(other, datamodule=CodeDataModule(_data(), cache_dir=str(cache)))
    assert sum(calls) == 96 and len(list(cache.glob("train-*"))) == 2  # another model, other caches
    _trainer(tmp_path).fit(prior, datamodule=CodeDataModule(_data(seed=1), cache_dir=str(cache)))
    assert len(list(cache.glob("train-*"))) == 3  # another split of the data, another cache


def test_an_interrupted_extraction_leaves_no_cache(folders: dict[str, Path], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "codes"
    prior = TransformerPrior(str(folders["vq"]), **SMALL)
    seen = []

    def failing(self: VQVAE, x: torch.Tensor) -> torch.Tensor:
        seen.append(len(x))
        if len(seen) > 1:
            raise RuntimeError("killed mid-extraction")
        return self.quantize(self.encode(x)).indices

    monkeypatch.setattr(VQVAE, "encode_indices", failing)
    dm = CodeDataModule(_data(), cache_dir=str(cache), extract_batch_size=16)
    with pytest.raises(RuntimeError, match="killed mid-extraction"):
        _trainer(tmp_path).fit(prior, datamodule=dm)
    assert list(cache.iterdir()) == []


def test_a_corrupt_cache_is_one_line_naming_it(folders: dict[str, Path], tmp_path: Path) -> None:
    cache = tmp_path / "codes"
    prior = TransformerPrior(str(folders["vq"]), **SMALL)
    _trainer(tmp_path, max_steps=1).fit(prior, datamodule=CodeDataModule(_data(), cache_dir=str(cache)))
    (train,) = cache.glob("train-*")
    (train / "codes.npy").write_bytes((train / "codes.npy").read_bytes()[:100])
    with pytest.raises(DatasetFileError, match=str(train)) as err:
        _trainer(tmp_path, max_steps=1).fit(prior, datamodule=CodeDataModule(_data(), cache_dir=str(cache)))
    assert "\n" not in str(err.value)


def test_code_datamodule_refuses_a_model_without_codes(tmp_path: Path) -> None:
    model = VQVAE(quantizer=VectorQuantizer(16, code_dim=8), **VQ)
    with pytest.raises(ValueError, match="encode_codes"):
        _trainer(tmp_path).fit(model, datamodule=CodeDataModule(_data(), cache_dir=str(tmp_path / "codes")))


def test_cached_labels_follow_a_split_given_by_indices(folders: dict[str, Path], tmp_path: Path) -> None:
    from lightning_ae import ArrayDataModule

    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (60, 1, 28, 28), dtype=np.uint8), np.arange(60) % 7
    data = ArrayDataModule(torch.from_numpy(images), labels=torch.from_numpy(labels), val_size=12, test_size=12,
                           batch_size=8)
    prior = TransformerPrior(str(folders["vq"]), num_classes=7, **SMALL)
    _trainer(tmp_path, max_steps=1).fit(prior, datamodule=CodeDataModule(data, cache_dir=str(tmp_path / "codes")))
    (train,) = (tmp_path / "codes").glob("train-*")
    expected = data.train_set.__getitems__(list(range(len(data.train_set))))[1]
    assert torch.equal(torch.from_numpy(np.load(train / "labels.npy")), expected)


def test_sample_grid_draws_one_row_per_class(folders: dict[str, Path]) -> None:
    from lightning_ae.callbacks import SampleGrid

    prior = TransformerPrior(str(folders["vq"]), num_classes=3, **SMALL).eval()
    torch.manual_seed(0)
    grid = SampleGrid(nrow=4)._draw(prior)
    torch.manual_seed(0)
    expected = prior.sample(12, labels=torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]))
    assert grid.shape == (12, 1, 28, 28) and torch.equal(grid, expected)
    unconditional = TransformerPrior(str(folders["vq"]), **SMALL).eval()
    assert SampleGrid(num_samples=5)._draw(unconditional).shape == (5, 1, 28, 28)


@pytest.mark.parametrize("prior_class", ["lightning_ae.TransformerPrior", "lightning_ae.PixelCNNPrior"])
def test_a_prior_built_by_the_cli_over_a_model_folder_saves_a_folder_that_loads(
        prior_class: str, folders: dict[str, Path], tmp_path: Path) -> None:
    """Built inside LightningCLI, the frozen model loaded from a folder must not record the prior's
    hyperparameters as its own (its saved config.json would then name arguments a VQ-VAE does not take)."""
    from lightning_ae.cli import build_cli
    from lightning_ae.pretrained import load_model

    small = ["--model.init_args.dim", "32", "--model.init_args.num_layers", "1", "--model.init_args.num_heads", "4"]
    if prior_class.endswith("PixelCNNPrior"):
        small = ["--model.init_args.channels", "8", "--model.init_args.num_layers", "2"]
    cli = build_cli(["--model", prior_class, "--model.init_args.vqvae_checkpoint", str(folders["vq"]), *small,
                     "--data", "lightning_ae.FakeImageDataModule", "--data.image_shape", "[1, 28, 28]",
                     "--trainer.logger", "false"], run=False)
    vq_config = json.loads((Path(folders["vq"]) / "config.json").read_text())["init_args"]
    assert set(dict(cli.model.vqvae.hparams)) - {"_class_path", "_instantiator"} == set(vq_config)
    cli.model.save_pretrained(tmp_path / "prior")
    saved = json.loads((tmp_path / "prior" / "vqvae" / "config.json").read_text())["init_args"]
    assert "vqvae_checkpoint" not in saved and saved == vq_config
    loaded = load_model(tmp_path / "prior").eval()
    codes = torch.randint(16, (2, 7, 7))
    torch.testing.assert_close(loaded.nll(codes), cli.model.eval().nll(codes))
