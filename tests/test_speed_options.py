"""Speed options, checked for correctness on a CPU: bf16 autocast for every variant, ``torch.compile`` of the
networks, and datasets held on the Trainer's device."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import Trainer

from lightning_ae import VQVAE, Autoencoder, AutoencoderBase, FakeImageDataModule, MNISTDataModule
from lightning_ae.data.base import InMemoryImageDataset
from tests.conftest import write_mnist
from tests.test_contract import VARIANTS, make


def _fit(model: AutoencoderBase, shape: tuple[int, int, int], tmp_path: Path, **kwargs) -> Trainer:
    data = FakeImageDataModule(image_shape=shape, num_train=96, val_size=32, batch_size=16)
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                      max_epochs=1, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0, **kwargs)
    trainer.fit(model, datamodule=data)
    return trainer


# ---- bf16 ------------------------------------------------------------------------------------------------
BF16_RTOL = 0.03
"""bf16 keeps 8 bits of mantissa (relative rounding 2^-9 ~ 0.2% per operation); a loss that is a mean over a
batch of many such terms stays within a few per cent of fp32."""


@pytest.mark.parametrize(("cls", "kwargs", "shape"), VARIANTS)
def test_bf16_loss_matches_fp32(cls, kwargs, shape) -> None:
    """The same batch, the same random draws: the loss under bf16 autocast is the fp32 loss within BF16_RTOL."""
    model = make(cls, kwargs, shape).eval()
    x = torch.rand(32, *shape, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    with torch.no_grad():
        fp32 = model.loss_terms(x, "val").loss.item()
    torch.manual_seed(0)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = model.loss_terms(x, "val").loss.float().item()
    assert bf16 == pytest.approx(fp32, rel=BF16_RTOL)


@pytest.mark.parametrize(("cls", "kwargs", "shape"), VARIANTS)
def test_bf16_mixed_trains_every_variant(cls, kwargs, shape, tmp_path: Path) -> None:
    model = make(cls, kwargs, shape)
    before = [p.detach().clone() for p in model.parameters()]
    dtypes: list[torch.dtype] = []
    model.decoder.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype) if m.training else None)
    trainer = _fit(model, shape, tmp_path, precision="bf16-mixed")
    assert dtypes and set(dtypes) == {torch.bfloat16}  # the decoder really ran under bf16 autocast
    assert torch.isfinite(trainer.callback_metrics["val/loss"])
    assert all(p.dtype == torch.float32 for p in model.parameters())  # mixed: fp32 master weights
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


# ---- torch.compile ---------------------------------------------------------------------------------------
def _tracing_hook(seen: list[bool]):
    def hook(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        seen.append(torch.compiler.is_compiling())  # True only while dynamo traces the compiled call
    return hook


def test_compile_networks_inductor_matches_eager_and_keeps_checkpoints(tmp_path: Path) -> None:
    torch.manual_seed(0)
    eager = Autoencoder(recon_loss="bce")
    compiled = Autoencoder(recon_loss="bce", compile_networks=True)
    compiled.load_state_dict(eager.state_dict())
    seen: list[bool] = []
    compiled.encoder.register_forward_hook(_tracing_hook(seen))
    compiled.compile_now()
    x = torch.rand(8, 1, 28, 28)
    torch.testing.assert_close(compiled(x), eager(x), rtol=1e-4, atol=1e-5)
    assert True in seen
    assert list(compiled.state_dict()) == list(eager.state_dict())  # in place: no "_orig_mod." names
    trainer = _fit(compiled, (1, 28, 28), tmp_path)
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    loaded = Autoencoder.load_from_checkpoint(tmp_path / "c.ckpt", compile_networks=False)
    torch.testing.assert_close(loaded.eval()(x), compiled.eval()(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("cls", "kwargs", "shape"), VARIANTS[::2])
def test_compile_networks_traces_every_variant(cls, kwargs, shape, tmp_path: Path) -> None:
    model = make(cls, {**kwargs, "compile_networks": True, "compile_options": {"backend": "eager"}}, shape)
    seen: list[bool] = []
    model.decoder.register_forward_hook(_tracing_hook(seen))
    trainer = _fit(model, shape, tmp_path)  # setup() compiles
    assert True in seen  # dynamo traced the decoder inside Trainer.fit
    assert torch.isfinite(trainer.callback_metrics["val/loss"])


def test_compile_options_without_compile_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"compile_options=.*without compile_networks=True"):
        VQVAE(compile_options={"mode": "max-autotune"})


# ---- datasets on the device ------------------------------------------------------------------------------
def test_dataset_indexes_on_its_device() -> None:
    images = torch.arange(5 * 4, dtype=torch.uint8).view(5, 1, 2, 2)
    data = InMemoryImageDataset(images, torch.arange(5) + 10, indices=torch.tensor([4, 2, 0]))
    assert data.to("cpu") is data
    meta = data.to("meta")
    batch_images, batch_labels = meta.__getitems__([2, 0])
    assert batch_images.device.type == "meta" and batch_labels.device.type == "meta"
    assert batch_images.shape == (2, 1, 2, 2) and batch_images.dtype == torch.uint8
    cpu_images, cpu_labels = data.__getitems__([2, 0])
    assert torch.equal(cpu_images, images[[0, 4]]) and cpu_labels.tolist() == [10, 14]


def _attached(data: MNISTDataModule, device: str) -> MNISTDataModule:
    data.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)), training=True)
    return data


def test_on_device_datamodule_places_splits_and_resumes(tmp_path: Path) -> None:
    write_mnist(tmp_path, n_train=64, n_test=16)
    kwargs = dict(data_dir=str(tmp_path), download=False, val_size=16, batch_size=8)
    plain, on_meta = MNISTDataModule(**kwargs), MNISTDataModule(on_device=True, **kwargs)
    for data in (plain, on_meta):
        data.setup("fit")
    _attached(on_meta, "meta")
    loader = on_meta.train_dataloader()
    assert loader.dataset is on_meta.train_dataloader().dataset  # moved once, reused
    batches = iter(loader)
    first = [next(batches) for _ in range(2)]
    assert all(b[0].device.type == "meta" and b[0].shape == (8, 1, 28, 28) for b in first)
    state = loader.state_dict()
    resumed = on_meta.train_dataloader()
    resumed.load_state_dict(state)
    assert len(list(resumed)) == len(loader) - 2  # the resumable loader's indices stay valid on the device
    assert on_meta.val_dataloader().dataset.device.type == "meta"
    # on the CPU, on_device changes nothing: the same batches in the same order
    _attached(plain, "cpu")
    on_cpu = _attached(MNISTDataModule(on_device=True, **kwargs), "cpu")
    on_cpu.setup("fit")
    for a, b in zip(plain.train_dataloader(), on_cpu.train_dataloader(), strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_on_device_needs_no_workers() -> None:
    with pytest.raises(ValueError, match=r"on_device=True .* num_workers must be 0, got 2"):
        MNISTDataModule(on_device=True, num_workers=2)


def test_bce_refuses_a_signed_pixel_range() -> None:
    with pytest.raises(ValueError, match=r"recon_loss='bce' needs pixel_range \(0, 1\), got \(-1.0, 1.0\)"):
        Autoencoder(recon_loss="bce", pixel_range=(-1, 1))
