"""The reconstruction yardsticks: the Fréchet distance against scipy, LPIPS against a hand computation, the
standard weight files read in their real formats (random weights) and refused in one line when missing or wrong,
and the callback and ``lightning-ae evaluate`` scoring a whole split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer

from lightning_ae import Autoencoder, FakeImageDataModule, ReconstructionMetrics
from lightning_ae.cli import main
from lightning_ae.metrics import FrechetDistance, frechet_distance
from lightning_ae.models import ImageClassifier
from lightning_ae.models.classifier import ResNet9
from lightning_ae.perceptual import (
    INCEPTION_FILE,
    LPIPS,
    LPIPS_CHANNELS,
    VGG16_FILE,
    InceptionV3Features,
    VGG16Features,
    WeightsFileError,
    WeightsNotFoundError,
    load_feature_network,
    lpips_distance,
)

scipy_linalg = pytest.importorskip("scipy.linalg")


def random_gaussian(d: int, n: int, seed: int, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + shift


def scipy_fd(a: np.ndarray, b: np.ndarray) -> float:
    """The FID formula as pytorch-fid computes it, with scipy's sqrtm."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy_linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_frechet_distance_matches_scipy() -> None:
    a, b = random_gaussian(6, 400, 0), random_gaussian(6, 300, 1, shift=0.5)
    t = [torch.from_numpy(x) for x in (a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))]
    assert frechet_distance(*t).item() == pytest.approx(scipy_fd(a, b), rel=1e-8)
    assert frechet_distance(t[0], t[1], t[0], t[1]).item() == pytest.approx(0.0, abs=1e-8)


def test_frechet_metric_accumulates_the_split_in_float64_and_merges_like_ddp() -> None:
    a, b = random_gaussian(5, 64, 2), random_gaussian(5, 48, 3, shift=1.0)
    whole = FrechetDistance(torch.nn.Flatten(), 5)
    whole.update_real(torch.from_numpy(a).float().view(-1, 5, 1, 1))
    whole.update_fake(torch.from_numpy(b).float().view(-1, 5, 1, 1))
    expected = scipy_fd(a.astype(np.float32).astype(np.float64), b.astype(np.float32).astype(np.float64))
    assert whole.compute().item() == pytest.approx(expected, rel=1e-6)
    halves = [FrechetDistance(torch.nn.Flatten(), 5) for _ in range(2)]  # two "ranks": states are summed
    for i, part in enumerate(halves):
        part.update_real(torch.from_numpy(a[i::2]).float().view(-1, 5, 1, 1))
        part.update_fake(torch.from_numpy(b[i::2]).float().view(-1, 5, 1, 1))
    halves[0].merge_state(halves[1])
    assert halves[0].compute().item() == pytest.approx(expected, rel=1e-6)


def test_lpips_distance_against_hand_computation() -> None:
    fa = [torch.tensor([[[[3.0]], [[4.0]]]])]  # one stage, two channels, one position: unit vector (0.6, 0.8)
    fb = [torch.tensor([[[[0.0]], [[2.0]]]])]  # (0, 1)
    w = [torch.tensor([2.0, 1.0])]
    expected = 2.0 * 0.6**2 + 1.0 * 0.2**2
    assert lpips_distance(fa, fb, w).item() == pytest.approx(expected, rel=1e-6)


def write_lpips_files(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """Random weights in the real formats: torchvision's vgg16 state dict and lpips' v0.1 heads."""
    torch.manual_seed(seed)
    vgg = {f"features.{k}": v for k, v in VGG16Features().features.state_dict().items()}
    vgg |= {"classifier.0.weight": torch.zeros(4, 4), "classifier.0.bias": torch.zeros(4)}  # ignored
    root.mkdir(parents=True, exist_ok=True)
    torch.save(vgg, root / VGG16_FILE)
    heads = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(LPIPS_CHANNELS)}
    torch.save(heads, root / "vgg.pth")
    return root / VGG16_FILE, root / "vgg.pth"


def test_lpips_loads_the_standard_files_and_is_a_distance(tmp_path: Path) -> None:
    vgg, heads = write_lpips_files(tmp_path)
    lpips = LPIPS.from_files(vgg, heads)
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    assert lpips(x, x).abs().max().item() < 1e-6
    d = lpips(x, y)
    assert d.shape == (2,) and (d > 0).all()
    torch.testing.assert_close(lpips(y, x), d)
    expected_head = torch.load(heads, weights_only=True)["lin2.model.1.weight"].flatten()
    torch.testing.assert_close(lpips.heads[2].data, expected_head)


def test_missing_or_wrong_weight_files_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsNotFoundError, match=INCEPTION_FILE.replace(".", r"\.")) as err:
        InceptionV3Features.from_file()
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(WeightsNotFoundError, match=VGG16_FILE.replace(".", r"\.")):
        LPIPS.from_files(heads=tmp_path / "none.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(WeightsFileError, match="is not the FID InceptionV3 network"):
        InceptionV3Features.from_file(bad)
    (tmp_path / "text.pth").write_text("not a pickle")
    with pytest.raises(WeightsFileError, match="not a readable"):
        InceptionV3Features.from_file(tmp_path / "text.pth")


def test_inception_reads_the_fid_file_format(tmp_path: Path) -> None:
    torch.manual_seed(0)
    state = InceptionV3Features().state_dict()
    state |= {"fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)}  # in the file, not used
    torch.save(state, tmp_path / INCEPTION_FILE)
    net = InceptionV3Features.from_file(tmp_path / INCEPTION_FILE)
    with torch.no_grad():
        f = net(torch.rand(2, 3, 32, 32))
    assert f.shape == (2, 2048) and torch.isfinite(f).all()
    torch.testing.assert_close(net.Mixed_7c.branch_pool.conv.weight, state["Mixed_7c.branch_pool.conv.weight"])


@pytest.fixture
def classifier_folder(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = ImageClassifier(backbone=ResNet9(1, [32, 32, 32, 32]), num_classes=10, image_shape=(1, 16, 16))
    return model.eval().save_pretrained(tmp_path / "classifier")


def test_callback_scores_the_whole_test_split(tmp_path: Path, classifier_folder: Path) -> None:
    vgg, heads = write_lpips_files(tmp_path / "lpips")
    torch.manual_seed(0)
    model = Autoencoder(latent_dim=4, image_shape=(1, 16, 16))
    data = FakeImageDataModule(image_shape=(1, 16, 16), num_train=32, num_test=20, val_size=8, batch_size=8)
    callback = ReconstructionMetrics(["psnr", "ssim", "lpips", "fd"], lpips_vgg=str(vgg), lpips_heads=str(heads),
                                     feature_network=str(classifier_folder), fd_name="fd_c10")
    trainer = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      callbacks=[callback], default_root_dir=tmp_path)
    trainer.test(model, datamodule=data, verbose=False)
    logged = trainer.callback_metrics
    assert {"test/psnr_per_image", "test/ssim", "test/lpips", "test/fd_c10"} <= set(logged)
    data.setup("test")
    with torch.no_grad():
        x = torch.cat([data.on_after_batch_transfer(b, 0)[0] for b in data.test_dataloader()])
        mse = (model.eval()(x).clamp(0, 1) - x).pow(2).flatten(1).mean(1)
    assert x.shape[0] == 20  # every image of the split, none twice
    assert logged["test/psnr_per_image"].item() == pytest.approx((-10 * torch.log10(mse)).mean().item(), rel=1e-4)
    assert logged["test/fd_c10"].item() > 0


def test_evaluate_command_prints_one_table(tmp_path: Path, classifier_folder: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    folder = Autoencoder(latent_dim=4, image_shape=(1, 16, 16)).save_pretrained(tmp_path / "ae")
    data = ["--data", "lightning_ae.FakeImageDataModule", "--data.image_shape", "[1, 16, 16]",
            "--data.num_test", "16", "--data.batch_size", "8"]
    main(["evaluate", "--ckpt_path", str(folder), *data, "--metrics", "[psnr, ssim, fd]",
          "--feature_network", str(classifier_folder), "--fd_name", "fd_c10", "--accelerator", "cpu"])
    out = capsys.readouterr().out
    assert "test split (all images, 1x16x16" in out
    assert all(f"test/{k}" in out for k in ("psnr_per_image", "ssim", "fd_c10", "psnr"))
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--ckpt_path", str(folder), *data, "--metrics", "[rfid]",
              "--inception_weights", str(tmp_path / "missing.pth")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "missing.pth does not exist" in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_ddp_ranks_agree_with_one_process(tmp_path: Path, classifier_folder: Path) -> None:
    """2 ranks: the yardsticks and AutoencoderKL's scaling factor are those of the whole split, on both ranks."""
    from lightning_ae import AutoencoderKL
    from tests.test_vqvae_ddp import run_script

    r0, r1 = run_script("ddp_eval_script.py", tmp_path, str(classifier_folder))
    assert r0["metrics"] == r1["metrics"] and r0["scaling_factor"] == r1["scaling_factor"]
    model = AutoencoderKL(image_shape=(1, 16, 16), network_options={"ch": 32, "ch_mult": [1, 2]})
    model.load_state_dict(r0["state"])
    model.eval()
    data = FakeImageDataModule(image_shape=(1, 16, 16), num_train=32, val_size=8, num_test=16, batch_size=4)
    data.setup("fit")
    data.setup("test")
    with torch.no_grad():
        train = torch.cat([data.on_after_batch_transfer(b, 0)[0] for b in data.train_dataloader()])
        test = torch.cat([data.on_after_batch_transfer(b, 0)[0] for b in data.test_dataloader()])
        std = model.encode(train).double().std().item()
        recon = model(test).clamp(0, 1)
        mse = (recon - test).pow(2).flatten(1).mean(1)
        fd = FrechetDistance(load_feature_network(str(classifier_folder)), 32)
        fd.update(test, recon)
    assert r0["scaling_factor"] == pytest.approx(1 / std, rel=1e-4)
    assert r0["metrics"]["test/psnr_per_image"] == pytest.approx((-10 * torch.log10(mse)).mean().item(), rel=1e-4)
    assert r0["metrics"]["test/fd"] == pytest.approx(fd.compute().item(), rel=1e-3, abs=1e-6)


def test_test_subcommand_logs_the_yardsticks_of_an_appended_callback(tiny_data_dir: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's command: ``lightning-ae test ... --trainer.callbacks+=lightning_ae.ReconstructionMetrics``."""
    monkeypatch.chdir(tmp_path)
    config = Path(__file__).parents[1] / "configs" / "mnist" / "ae.yaml"
    data = ["--data.init_args.data_dir", str(tiny_data_dir), "--data.init_args.download", "false",
            "--data.init_args.val_size", "16", "--trainer.accelerator", "cpu", "--trainer.devices", "1"]
    main(["fit", "--config", str(config), *data, "--trainer.max_steps", "1", "--trainer.limit_val_batches", "1"])
    main(["test", "--config", str(config), *data, "--ckpt_path", "checkpoints/mnist_ae/last.ckpt",
          "--trainer.callbacks+=lightning_ae.ReconstructionMetrics", "--trainer.callbacks.metrics", "[psnr, ssim]",
          "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", "logs"])
    (metrics,) = Path("logs").rglob("metrics.csv")
    header = metrics.read_text().splitlines()[0].split(",")
    assert {"test/psnr_per_image", "test/ssim", "test/psnr"} <= set(header)
