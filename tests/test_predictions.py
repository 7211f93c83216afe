"""PredictionWriter and ``lightning-ae predict``: the file read back equals the model's own outputs, in order."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer

from lightning_ae import VQVAE, Autoencoder, FakeImageDataModule, MNISTDataModule, PredictionWriter
from lightning_ae.cli import main
from tests.conftest import write_mnist

ROOT = Path(__file__).parents[1]


def _expected(model: LightningModule, data: MNISTDataModule | FakeImageDataModule) -> dict[str, torch.Tensor]:
    """The model's own ``predict_step`` over the whole test split, in dataset order."""
    data.setup("predict")
    images, labels = data.test_set.images, data.test_set.labels
    with torch.no_grad():
        out = model.eval().predict_step((data.transform(images, training=False), labels), 0)
    return {**out, "index": torch.arange(len(images))}


def _assert_matches(path: Path, expected: dict[str, torch.Tensor], origins: bool = True) -> None:
    """The file holds the expected tensors and, from our datamodules, each row's origin (the test split's rows)."""
    written = torch.load(path, weights_only=True)
    assert written.keys() == expected.keys() | ({"split", "row"} if origins else set())
    for key, value in expected.items():
        torch.testing.assert_close(written[key], value, rtol=1e-5, atol=1e-6, msg=key)
    if origins:
        assert written["split"] == ["test"] * len(expected["index"])
        assert torch.equal(written["row"], expected["index"])


def test_writer_in_a_plain_trainer(tmp_path: Path) -> None:
    data = FakeImageDataModule(image_shape=(1, 8, 8), num_test=37, eval_batch_size=10)
    model = Autoencoder(image_shape=(1, 8, 8), latent_dim=3)
    writer = PredictionWriter(str(tmp_path / "out" / "preds.pt"))
    Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, callbacks=[writer]).predict(
        model, datamodule=data, return_predictions=False)
    assert writer.written == [tmp_path / "out" / "preds.pt"]
    _assert_matches(writer.written[0], _expected(model, data))
    assert {"latent", "reconstruction", "label", "index", "split", "row"} == torch.load(writer.written[0]).keys()
    assert not list((tmp_path / "out").glob(".*tmp*"))  # no temporary file left behind


def test_writer_refuses_an_empty_path() -> None:
    with pytest.raises(ValueError, match="output_path"):
        PredictionWriter("  ")


def _cli(command: str, data_dir: Path, root: Path, *extra: str) -> None:
    main([command, "--model", "VQVAE", "--model.hidden_channels", "8", "--model.res_channels", "4",
          "--model.num_res_blocks", "1", "--model.latent_dim", "4", "--model.quantizer", "VectorQuantizer",
          "--model.quantizer.num_codes", "8", "--model.quantizer.code_dim", "4",
          "--data", "MNISTDataModule", "--data.data_dir", str(data_dir), "--data.download", "false",
          "--data.val_size", "16", "--data.batch_size", "16", "--trainer.accelerator", "cpu",
          "--trainer.devices", "1", "--trainer.enable_progress_bar", "false",
          "--trainer.default_root_dir", str(root), *extra])


def test_cli_predict_writes_every_output_of_the_model(tmp_path: Path, tiny_data_dir: Path) -> None:
    _cli("fit", tiny_data_dir, tmp_path / "fit", "--trainer.max_steps", "2")
    (ckpt,) = (tmp_path / "fit").glob("lightning_logs/version_*/checkpoints/*.ckpt")
    _cli("predict", tiny_data_dir, tmp_path / "predict", "--ckpt_path", str(ckpt))
    (path,) = (tmp_path / "predict").glob("lightning_logs/version_*/predictions.pt")
    data = MNISTDataModule(data_dir=str(tiny_data_dir), val_size=16, download=False)
    _assert_matches(path, _expected(VQVAE.load_from_checkpoint(ckpt), data))
    assert len(torch.load(path)["index"]) == 32

    chosen = tmp_path / "chosen.pt"
    _cli("predict", tiny_data_dir, tmp_path / "predict2", "--ckpt_path", str(ckpt),
         "--trainer.callbacks+", "PredictionWriter", "--trainer.callbacks.output_path", str(chosen))
    assert chosen.is_file() and not list((tmp_path / "predict2").glob("**/predictions.pt"))


@pytest.mark.slow
def test_cli_predict_under_ddp_writes_every_sample_once_in_order(tmp_path: Path) -> None:
    """Two CPU ranks, 33 test images (shards of 17 and 16): one file, rows 0..32 in dataset order."""
    data_dir = write_mnist(tmp_path / "data", n_train=64, n_test=33)
    main(["fit", "--model", "Autoencoder", "--model.latent_dim", "3", "--data", "MNISTDataModule",
          "--data.data_dir", str(data_dir), "--data.download", "false", "--data.val_size", "16",
          "--trainer.max_steps", "1", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
          "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path / "fit")])
    (ckpt,) = (tmp_path / "fit").glob("lightning_logs/version_*/checkpoints/*.ckpt")
    out = tmp_path / "preds.pt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "lightning_ae", "predict", "--model", "Autoencoder", "--model.latent_dim", "3",
         "--data", "MNISTDataModule", "--data.data_dir", str(data_dir), "--data.download", "false",
         "--data.val_size", "16", "--data.eval_batch_size", "5", "--trainer.accelerator", "cpu",
         "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.enable_progress_bar", "false",
         "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path), "--ckpt_path", str(ckpt),
         "--trainer.callbacks+", "PredictionWriter", "--trainer.callbacks.output_path", str(out),
         "--trainer.callbacks+=tests.weights_dump.RecordGathered", f"--trainer.callbacks.out_dir={tmp_path}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = _expected(Autoencoder.load_from_checkpoint(ckpt),
                         MNISTDataModule(data_dir=str(data_dir), val_size=16, download=False))
    _assert_matches(out, expected)
    gathered = [torch.load(tmp_path / f"gathered_rank{r}.pt")["gathered"] for r in range(2)]
    assert gathered == [33, 0]  # rank 0 received every row, rank 1 none (no rank but the writer holds them all)
    assert torch.equal(torch.load(out)["index"], torch.arange(33))


def test_predict_split_all_of_a_folder_carries_each_file(tmp_path: Path) -> None:
    """``predict_split: all`` covers every image of the folder once; each row names its split and its file, and
    the written reconstruction of a row is the model's reconstruction of that very file."""
    from lightning_ae import ImageFolderDataModule
    from tests.conftest import write_image_folder

    written = write_image_folder(tmp_path / "images", ("a", "b"), n=7, size=(8, 8))
    data = ImageFolderDataModule(root=str(tmp_path / "images"), image_size=8, val_size=2, test_size=3,
                                 eval_batch_size=4, predict_split="all", data_dir=str(tmp_path), decode_workers=1)
    model = Autoencoder(image_shape=(3, 8, 8), latent_dim=3).eval()
    writer = PredictionWriter(str(tmp_path / "preds.pt"))
    Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, callbacks=[writer]).predict(
        model, datamodule=data, return_predictions=False)
    preds = torch.load(tmp_path / "preds.pt", weights_only=True)
    assert len(preds["path"]) == 14 and sorted(preds["path"]) == sorted(
        str(p.relative_to(tmp_path / "images")) for p in written)
    assert [preds["split"].count(s) for s in ("train", "val", "test")] == [9, 2, 3]
    for i, rel in enumerate(preds["path"]):
        pixels = torch.from_numpy(written[tmp_path / "images" / rel]).float().div(255).unsqueeze(0)
        with torch.no_grad():
            torch.testing.assert_close(preds["reconstruction"][i:i + 1], model(pixels), rtol=1e-5, atol=1e-6)


def test_predict_split_of_arrays_gives_the_original_rows(tmp_path: Path) -> None:
    from lightning_ae import ArrayDataModule

    images = torch.randint(0, 256, (30, 1, 4, 4), dtype=torch.uint8)
    for split, count in (("train", 24), ("val", 3), ("test", 3)):
        data = ArrayDataModule(images=images, val_size=3, test_size=3, eval_batch_size=5, predict_split=split)
        writer = PredictionWriter(str(tmp_path / f"{split}.pt"))
        model = Autoencoder(image_shape=(1, 4, 4), latent_dim=2)
        Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, callbacks=[writer]).predict(
            model, datamodule=data, return_predictions=False)
        preds = torch.load(tmp_path / f"{split}.pt", weights_only=True)
        assert preds["split"] == [split] * count and len(preds["row"]) == count
        assert torch.equal(torch.sort(preds["row"]).values, preds["row"])  # dataset order follows the array
        with torch.no_grad():  # row r of the file is the model's output on row r of the array
            expected = model.eval()(images[preds["row"]].float() / 255)
        torch.testing.assert_close(preds["reconstruction"], expected, rtol=1e-5, atol=1e-6)
    assert set(torch.cat([torch.load(tmp_path / f"{s}.pt")["row"] for s in ("train", "val", "test")]).tolist()) == set(
        range(30))
    with pytest.raises(ValueError, match="predict_split"):
        ArrayDataModule(images=images, predict_split="everything")  # type: ignore[arg-type]
