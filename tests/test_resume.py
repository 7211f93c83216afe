"""Exact resume: the data position and every random stream of a step come back from a checkpoint.

The in-process tests stop a run with an exception; the slow matrix kills a real ``lightning-ae fit`` subprocess
with SIGKILL mid-epoch, resumes it with ``--ckpt_path last`` and compares the final state with ``torch.equal``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_ae import VAE, MNISTDataModule
from lightning_ae.data.resumable import ResumableDataLoader, ResumableShardSampler
from tests.resume_helpers import CrashAtStep, CrashError

ROOT = Path(__file__).parents[1]


def _loader(n: int = 20, batch_size: int = 3) -> ResumableDataLoader:
    dataset = torch.utils.data.TensorDataset(torch.arange(n))
    return ResumableDataLoader(dataset, batch_size, ResumableShardSampler(dataset, seed=5), seed=5)


def _values(batches: list[Any]) -> list[list[int]]:
    return [b[0].tolist() for b in batches]


def test_loader_resumes_mid_epoch_by_index() -> None:
    full = _loader()
    full.sampler.set_epoch(2)
    expected = _values(list(full))
    first = _loader()
    first.sampler.set_epoch(2)
    iterator = iter(first)
    done = [next(iterator), next(iterator)]
    state = first.state_dict()
    assert state == {"epoch": 2, "batches": 2}
    resumed = _loader()
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(2)
    assert len(resumed) == len(full) == 7  # Lightning counts the batches already done itself
    assert _values(done) + _values(list(resumed)) == expected
    assert resumed.state_dict() == {"epoch": 2, "batches": 7}
    assert _values(list(resumed)) == expected  # the skip applies to one iteration only


class _TensorIndexed(torch.utils.data.Dataset):
    """Whole batches from one index tensor (``takes_index_tensors``), remembering what each batch was indexed with."""

    takes_index_tensors = True

    def __init__(self, n: int) -> None:
        self.values, self.indexed_with = torch.arange(n) * 10, []

    def __len__(self) -> int:
        return len(self.values)

    def __getitems__(self, indices: Any) -> torch.Tensor:
        self.indexed_with.append(type(indices))
        return self.values[torch.as_tensor(indices)]


@pytest.mark.parametrize(("world", "rank"), [(1, 0), (3, 0), (3, 2)])
@pytest.mark.parametrize("skip", [0, 2])
@pytest.mark.parametrize("drop_last", [False, True])
def test_index_tensor_batches_equal_torchs_iterator(world: int, rank: int, skip: int, drop_last: bool) -> None:
    def loader(direct: bool) -> ResumableDataLoader:
        dataset = _TensorIndexed(53)
        sampler = ResumableShardSampler(dataset, seed=5)
        sampler.num_replicas, sampler.rank = world, rank  # as DistributedSampler(drop_last=True) sets them
        sampler.num_samples = len(dataset) // world
        sampler.total_size = sampler.num_samples * world
        built = ResumableDataLoader(dataset, 4, sampler, seed=5, collate_fn=lambda b: b, drop_last=drop_last,
                                    pin_memory=not direct)  # pinning (on a CPU: nothing) takes torch's iterator
        built.sampler.set_epoch(3)
        if skip:
            built.load_state_dict({"epoch": 3, "batches": skip})
        return built

    direct, through_torch = loader(True), loader(False)
    distributed = torch.utils.data.DistributedSampler(direct.dataset, world, rank, shuffle=True, seed=5, drop_last=True)
    distributed.set_epoch(3)
    assert direct.sampler.shard().tolist() == list(distributed)  # the epoch's order is DistributedSampler's
    fast, slow = list(direct), list(through_torch)
    assert set(direct.dataset.indexed_with) == {torch.Tensor}  # one index tensor per batch
    assert set(through_torch.dataset.indexed_with) == {list}
    shard = 53 // world
    assert [b.tolist() for b in fast] == [b.tolist() for b in slow]
    assert len(fast) == (shard // 4 if drop_last else -(-shard // 4)) - skip == len(direct) - skip
    assert direct.state_dict() == through_torch.state_dict() == {"epoch": 3, "batches": len(fast) + skip}


def test_loader_state_of_a_finished_epoch_resumes_nothing() -> None:
    loader = _loader()
    loader.load_state_dict({"epoch": 0, "batches": 7})
    loader.sampler.set_epoch(1)
    assert len(list(loader)) == 7
    with pytest.raises(KeyError, match="batches"):
        loader.load_state_dict({"epoch": 0})


def test_loader_draws_nothing_from_the_global_generator() -> None:
    state = torch.get_rng_state()
    list(_loader())
    assert torch.equal(state, torch.get_rng_state())


def _vae_trainer(tmp_path: Path, max_steps: int, *callbacks: Any) -> Trainer:
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_last=True,
                                 save_top_k=0)
    return Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                   enable_model_summary=False, deterministic=True, callbacks=[checkpoint, *callbacks],
                   default_root_dir=tmp_path)


def _vae_run(tmp_path: Path, data_dir: Path, *callbacks: Any, ckpt_path: str | None = None) -> LightningModule:
    seed_everything(0)
    model = VAE(latent_dim=4, kl_warmup_steps=3, num_classes=10)  # reparameterization noise
    data = MNISTDataModule(data_dir=str(data_dir), batch_size=16, val_size=16, download=False, binarize="dynamic")
    _vae_trainer(tmp_path, 10, *callbacks).fit(model, datamodule=data, ckpt_path=ckpt_path)
    return model


def test_vae_resumes_mid_epoch_exactly_in_process(tmp_path: Path, tiny_data_dir: Path) -> None:
    """5 batches an epoch: stopped at step 7, resumed from step 6 (mid-epoch 2), compared at step 10."""
    expected = _vae_run(tmp_path / "full", tiny_data_dir).state_dict()
    with pytest.raises(CrashError):
        _vae_run(tmp_path / "cut", tiny_data_dir, CrashAtStep(7))
    last = tmp_path / "cut" / "ckpt" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 6
    resumed = _vae_run(tmp_path / "cut", tiny_data_dir, ckpt_path=str(last)).state_dict()
    assert expected.keys() == resumed.keys()
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), name


def test_loading_a_model_leaves_the_random_state_alone(tmp_path: Path, tiny_data_dir: Path) -> None:
    """``load_from_checkpoint`` draws what building the model draws, and does not jump to the stored state."""
    _vae_run(tmp_path, tiny_data_dir)
    state = torch.get_rng_state()
    VAE(latent_dim=4, kl_warmup_steps=3, num_classes=10)
    after_init = torch.get_rng_state()
    torch.set_rng_state(state)
    VAE.load_from_checkpoint(tmp_path / "ckpt" / "last.ckpt")
    assert torch.equal(after_init, torch.get_rng_state())


# ---- the real thing: SIGKILL a `lightning-ae fit` subprocess mid-epoch, resume with --ckpt_path last ----------
VQ_SMALL = ["--model.hidden_channels", "16", "--model.res_channels", "8", "--model.num_res_blocks", "1",
            "--model.latent_dim", "8", "--model.quantizer", "VectorQuantizer", "--model.quantizer.num_codes", "16",
            "--model.quantizer.code_dim", "8"]
VARIANTS: dict[str, list[str]] = {
    "ae": ["--model", "Autoencoder", "--model.latent_dim", "4"],
    "dae": ["--model", "DenoisingAutoencoder", "--model.latent_dim", "4", "--model.corruption", "salt_and_pepper",
            "--model.noise_fraction", "0.3"],
    "sae": ["--model", "SparseAutoencoder", "--model.latent_dim", "8", "--model.sparsity", "topk", "--model.k", "3"],
    "cae": ["--model", "ContractiveAutoencoder", "--model.latent_dim", "4", "--model.penalty", "stochastic"],
    "vae": ["--model", "VAE", "--model.latent_dim", "4", "--data.binarize", "dynamic"],
    "vqvae": ["--model", "VQVAE", *VQ_SMALL, "--model.quantizer.kmeans_init", "true",
              "--model.quantizer.restart_threshold", "1.0"],
    "prior": ["--model", "PixelCNNPrior", "--model.channels", "8", "--model.num_layers", "2"],
    # conditional (class dropout draws), dropout, on codes cached by CodeDataModule (its own data arguments)
    "transformer-prior": ["--model", "TransformerPrior", "--model.dim", "16", "--model.num_layers", "1",
                          "--model.num_heads", "2", "--model.dropout", "0.1", "--model.class_dropout", "0.3",
                          "--data", "CodeDataModule", "--data.batch_size", "16", "--data.cache_dir", "codes",
                          "--data.images", "MNISTDataModule", "--data.images.data_dir", "{data_dir}",
                          "--data.images.download", "false", "--data.images.val_size", "16"],
    # two optimizers (manual optimization), the discriminator starting at step 4, before the kill at step 7
    "vqgan": ["--model", "VQGAN", "--model.latent_dim", "8", "--model.network_options", '{"ch": 32, "ch_mult": [1, 2]}',
              "--model.quantizer", "VectorQuantizer", "--model.quantizer.num_codes", "16",
              "--model.quantizer.code_dim", "8", "--model.discriminator", "lightning_ae.nets.PatchGANDiscriminator",
              "--model.discriminator.in_channels", "1", "--model.discriminator.ndf", "16",
              "--model.discriminator.n_layers", "2", "--model.disc_start", "4", "--model.lecam_weight", "0.1"],
}


def _cli_fit(workdir: Path, data_dir: Path, variant: list[str], *extra: str) -> None:
    """One ``python -m lightning_ae fit`` of 10 steps (5 batches an epoch), last.ckpt every 2 steps."""
    _finish(_start_fit(workdir, data_dir, variant, *extra), extra)


def _start_fit(workdir: Path, data_dir: Path, variant: list[str], *extra: str) -> subprocess.Popen[str]:
    """:func:`_cli_fit`, started (one thread: two of them run side by side on two cores, deterministically)."""
    data = [] if "--data" in variant else ["--data", "MNISTDataModule", "--data.data_dir", str(data_dir),
                                           "--data.download", "false", "--data.val_size", "16", "--data.batch_size",
                                           "16"]
    variant = [arg.replace("{data_dir}", str(data_dir)) for arg in variant]
    command = [
        sys.executable, "-m", "lightning_ae", "fit", *data, *variant, "--seed_everything", "0",
        "--trainer.max_steps", "10",
        "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.deterministic", "true",
        "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.default_root_dir", str(workdir),
        "--trainer.callbacks+", "ModelCheckpoint", "--trainer.callbacks.dirpath", str(workdir / "ckpt"),
        "--trainer.callbacks.every_n_train_steps", "2", "--trainer.callbacks.save_last", "true",
        "--trainer.callbacks.save_top_k", "0", *extra,
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def _finish(process: subprocess.Popen[str], extra: tuple[str, ...]) -> None:
    stderr = process.communicate(timeout=300)[1]
    killed = "tests.resume_helpers.KillAtStep" in extra
    assert process.returncode == (-9 if killed else 0), stderr[-3000:]


def _assert_same(a: Any, b: Any, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _vqvae_checkpoint(path: Path) -> Path:
    from lightning_ae import VQVAE, FakeImageDataModule, VectorQuantizer

    model = VQVAE(hidden_channels=16, res_channels=8, num_res_blocks=1, latent_dim=8,
                  quantizer=VectorQuantizer(16, code_dim=8))
    trainer = Trainer(max_steps=1, limit_val_batches=0, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(model, datamodule=FakeImageDataModule(num_train=64, val_size=16, batch_size=16))
    trainer.save_checkpoint(path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("name", list(VARIANTS))
def test_sigkill_mid_epoch_then_resume_is_bit_identical(name: str, tmp_path: Path, tiny_data_dir: Path) -> None:
    """Killed at step 7 (epoch 2, batch 2 of 5), resumed from last.ckpt (step 6), compared at step 10."""
    variant = list(VARIANTS[name])
    if name in ("prior", "transformer-prior"):
        variant += ["--model.vqvae_checkpoint", str(_vqvae_checkpoint(tmp_path / "vqvae.ckpt"))]
    full, cut = tmp_path / "full", tmp_path / "cut"
    full.mkdir()
    cut.mkdir()
    kill = ("--trainer.callbacks+", "tests.resume_helpers.KillAtStep", "--trainer.callbacks.step", "7")
    uninterrupted, killed = _start_fit(full, tiny_data_dir, variant), _start_fit(cut, tiny_data_dir, variant, *kill)
    _finish(uninterrupted, ())
    _finish(killed, kill)
    assert torch.load(cut / "ckpt" / "last.ckpt", weights_only=True)["global_step"] == 6
    _cli_fit(cut, tiny_data_dir, variant, "--ckpt_path", "last")
    expected = torch.load(full / "ckpt" / "last.ckpt", weights_only=True)
    resumed = torch.load(cut / "ckpt" / "last.ckpt", weights_only=True)
    assert expected["global_step"] == resumed["global_step"] == 10
    for key in ("state_dict", "optimizer_states", "lr_schedulers"):
        _assert_same(expected[key], resumed[key], key)
