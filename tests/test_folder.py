"""ImageFolderDataModule on folders the tests write: layouts, modes, resizing, bad files, the decoded-once cache."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from PIL import Image

from lightning_ae import Autoencoder, ImageFolderDataModule, linear_probe
from lightning_ae.callbacks import LatentSpaceVisualizer, ReconstructionGrid
from lightning_ae.data import DatasetFileError, ImageDecodeError
from lightning_ae.data import cache as cache_module
from tests.conftest import write_id_folder, write_image_folder


def _folder(root: Path, tmp_path: Path, **kwargs) -> ImageFolderDataModule:
    args = {"image_size": 8, "resize": "none", "val_size": 2, "test_size": 2, "decode_workers": 1,
            "cache_dir": str(tmp_path / "cache"), "batch_size": 4}
    return ImageFolderDataModule(root=str(root), **{**args, **kwargs})


def _pixels_by_file(data: ImageFolderDataModule) -> dict[str, np.ndarray]:
    assert data.cache is not None
    return {name: np.asarray(data.cache.images[i]) for i, name in enumerate(data.cache.files)}


# ---- layouts ------------------------------------------------------------------------------------------------
def test_class_pool_round_trip(tmp_path: Path) -> None:
    written = write_image_folder(tmp_path / "img", ("dog", "cat"), n=6)
    data = _folder(tmp_path / "img", tmp_path)
    assert data.class_names == ["cat", "dog"] and data.num_classes == 2 and data.image_shape == (3, 8, 8)
    data.prepare_data()
    data.setup()
    assert (len(data.train_set), len(data.val_set), len(data.test_set)) == (8, 2, 2)
    pixels = _pixels_by_file(data)
    for path, array in written.items():  # PNG is lossless and resize="none": every byte comes back
        np.testing.assert_array_equal(pixels[str(path.relative_to(tmp_path / "img"))], array)
    rows = torch.cat([data.train_set.indices, data.val_set.indices, data.test_set.indices]).sort().values
    assert rows.tolist() == list(range(12))  # the splits partition the images
    images, labels = next(iter(data.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 8, 8)
    for image, label in zip(images, labels, strict=True):  # the label is the folder the image came from
        (name,) = [n for n, p in pixels.items() if np.array_equal(p, image.numpy())]
        assert data.class_names[label] == name.split("/")[0]


def test_split_layout_missing_test_is_held_out(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "img" / "train", ("a", "b", "c"), n=5)
    write_image_folder(tmp_path / "img" / "val", ("a", "c"), n=2, seed=1)
    data = _folder(tmp_path / "img", tmp_path, test_size=3)
    data.setup()
    assert data.class_names == ["a", "b", "c"]
    assert (len(data.train_set), len(data.val_set), len(data.test_set)) == (12, 4, 3)
    assert data.val_set.labels[data.val_set.indices].tolist() == [0, 0, 2, 2]


def test_split_layout_rejects_unknown_class(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "img" / "train", ("a",), n=2)
    write_image_folder(tmp_path / "img" / "test", ("z",), n=2)
    with pytest.raises(DatasetFileError, match=r"test/z is not among the training classes \['a'\]"):
        _folder(tmp_path / "img", tmp_path).setup()


def test_flat_folder_is_unlabelled_and_trains_with_callbacks(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "img", (), n=12, size=(8, 8))
    data = _folder(tmp_path / "img", tmp_path)
    assert data.num_classes is None and data.class_names == []
    data.setup()
    batch = next(iter(data.train_dataloader()))
    assert isinstance(batch, torch.Tensor) and batch.shape == (4, 3, 8, 8)
    model = Autoencoder(image_shape=data.image_shape, num_classes=data.num_classes, latent_dim=2)
    visualizer = LatentSpaceVisualizer(every_n_epochs=1)
    trainer = Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                      callbacks=[visualizer, ReconstructionGrid(every_n_epochs=1)])
    trainer.fit(model, datamodule=data)
    assert visualizer.last_points is not None and visualizer.last_labels is None
    with pytest.raises(ValueError, match="labels"):
        linear_probe(model, data, num_classes=2)


# ---- decoding -----------------------------------------------------------------------------------------------
def test_modes_become_the_requested_channels(tmp_path: Path) -> None:
    root = tmp_path / "img"
    root.mkdir()
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
    Image.fromarray(grey).save(root / "grey.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(root / "deep.png")  # 16-bit: k * 257 -> k
    rgba = np.dstack([np.full((8, 8), v, np.uint8) for v in (10, 20, 30, 40)])
    Image.fromarray(rgba).save(root / "rgba.png")
    Image.fromarray(np.dstack([grey] * 3)).convert("P", palette=Image.Palette.ADAPTIVE).save(root / "palette.png")
    for channels in (1, 3, 4):
        data = _folder(root, tmp_path, channels=channels, val_size=1, test_size=1)
        data.setup()
        pixels = _pixels_by_file(data)
        assert {p.shape for p in pixels.values()} == {(channels, 8, 8)}
        for name in ("grey.png", "deep.png", "palette.png"):
            np.testing.assert_array_equal(pixels[name][0], grey, err_msg=name)
        expected = {1: [round(0.299 * 10 + 0.587 * 20 + 0.114 * 30)], 3: [10, 20, 30], 4: [10, 20, 30, 40]}
        assert pixels["rgba.png"][:, 0, 0].tolist() == expected[channels]
        if channels == 4:
            assert (pixels["grey.png"][3] == 255).all()


def test_center_crop_and_crop_size_hand_computed(tmp_path: Path) -> None:
    root = tmp_path / "img"
    root.mkdir()
    wide = np.tile(np.arange(8, dtype=np.uint8) * 10, (4, 1))  # 4 high, 8 wide, column j = 10 j
    Image.fromarray(wide).save(root / "wide.png")
    data = _folder(root, tmp_path, image_size=4, resize="center_crop", channels=1, val_size=0, test_size=0)
    data.setup()
    np.testing.assert_array_equal(_pixels_by_file(data)["wide.png"][0], wide[:, 2:6])  # short side fits: no resample
    square = np.arange(36, dtype=np.uint8).reshape(6, 6)
    Image.fromarray(square).save(root / "wide.png")
    os.utime(root / "wide.png", ns=(1, 1))
    data = _folder(root, tmp_path, image_size=[2, 4], crop_size=[2, 4], resize="none", channels=1, val_size=0,
                   test_size=0)
    data.setup()
    np.testing.assert_array_equal(_pixels_by_file(data)["wide.png"][0], square[2:4, 1:5])


def test_resize_stretches(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "img", (), n=3, size=(5, 9))
    data = _folder(tmp_path / "img", tmp_path, image_size=[6, 4], resize="resize", val_size=1, test_size=1)
    data.setup()
    assert data.image_shape == (3, 6, 4) and data.cache.images.shape == (3, 3, 6, 4)


def test_wrong_size_is_named_when_resize_is_none(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "img", ("a",), n=3)
    Image.fromarray(np.zeros((9, 8, 3), np.uint8)).save(tmp_path / "img" / "a" / "odd.png")
    with pytest.raises(ImageDecodeError, match=r"a/odd.png: is 8x9, not 8x8 \(resize='none'\)"):
        _folder(tmp_path / "img", tmp_path).prepare_data()


def test_corrupt_file_is_named_or_skipped(tmp_path: Path) -> None:
    written = write_image_folder(tmp_path / "img", ("a", "b"), n=4, ext="jpg")
    bad = next(iter(written))
    bad.write_bytes(bad.read_bytes()[:100])  # truncated JPEG
    (tmp_path / "img" / "b" / "zz.png").write_bytes(b"not a png")
    with pytest.raises(ImageDecodeError, match=rf"{bad}.*2 unreadable image\(s\); skip_bad_files=True"):
        _folder(tmp_path / "img", tmp_path).prepare_data()
    assert not list((tmp_path / "cache").iterdir())  # the failed decode left no cache behind
    data = _folder(tmp_path / "img", tmp_path, skip_bad_files=True)
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable image\(s\).*000.jpg.*zz.png"):
        data.setup()
    assert len(data.cache.files) == 7 and len(data.cache.skipped) == 2


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda r: None, "does not exist"),
        (lambda r: r.mkdir(), "no images"),
        (lambda r: (r.mkdir(), (r / "notes.txt").write_text("x")), "no images"),
        (lambda r: (write_image_folder(r, ("a",), n=2), (r / "empty").mkdir()), "class folder .*empty holds no images"),
        (lambda r: (write_image_folder(r, ("a",), n=2), write_image_folder(r, (), n=1)), "mixes class folders"),
    ],
    ids=["missing-root", "empty-root", "no-image-extension", "empty-class", "mixed"],
)
def test_bad_folders_are_named(tmp_path: Path, make, message: str) -> None:
    root = tmp_path / "img"
    make(root)
    with pytest.raises(DatasetFileError, match=message) as err:
        _folder(root, tmp_path).setup()
    assert "\n" not in str(err.value) and str(root) in str(err.value)


# ---- the cache ----------------------------------------------------------------------------------------------
def test_cache_is_reused_and_invalidated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written = write_image_folder(tmp_path / "img", ("a", "b"), n=4)
    _folder(tmp_path / "img", tmp_path).prepare_data()
    (built,) = (tmp_path / "cache").iterdir()

    def no_decode(*args, **kwargs):
        raise AssertionError("decoded again")

    with monkeypatch.context() as m:  # an unchanged folder is never decoded twice
        m.setattr(cache_module, "_decode_all", no_decode)
        data = _folder(tmp_path / "img", tmp_path)
        data.prepare_data()
        data.setup()
    assert data.cache.path == built
    changed = next(iter(written))
    Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(changed)  # same size on disk, new mtime
    os.utime(changed, ns=(2, 2))
    data = _folder(tmp_path / "img", tmp_path)
    data.setup()
    assert data.cache.path != built and (_pixels_by_file(data)[str(changed.relative_to(tmp_path / "img"))] == 7).all()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "img" / "b" / "added.png")
    added = _folder(tmp_path / "img", tmp_path)
    added.setup()
    assert added.cache.images.shape == (9, 3, 8, 8)
    other = _folder(tmp_path / "img", tmp_path, image_size=4, resize="resize")  # other options: another cache
    other.setup()
    assert other.cache.images.shape == (9, 3, 4, 4) and len(list((tmp_path / "cache").iterdir())) == 4


def test_interrupted_decode_leaves_no_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_image_folder(tmp_path / "img", ("a",), n=5)
    real = cache_module._decode_all

    def interrupted(files, options, out, workers):
        real(files[:2], options, out, workers)
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_module, "_decode_all", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _folder(tmp_path / "img", tmp_path).prepare_data()
    assert not list((tmp_path / "cache").iterdir())
    monkeypatch.setattr(cache_module, "_decode_all", real)
    data = _folder(tmp_path / "img", tmp_path, val_size=1, test_size=1)
    data.setup()
    assert len(data.train_set) == 3


def test_pixel_variance_matches_the_images(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "img", ("a", "b"), n=5)
    data = _folder(tmp_path / "img", tmp_path, pixel_range=(-1.0, 1.0))
    data.setup()
    train = data.train_set.images[data.train_set.indices].double() / 255
    assert data.pixel_variance() == pytest.approx(train.var().item() * 4, rel=1e-9)


def test_parallel_decode_matches_serial(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "img", ("a", "b"), n=70, size=(6, 6), ext="jpg")  # > one chunk of 64
    serial = _folder(tmp_path / "img", tmp_path / "s", image_size=6)
    parallel = _folder(tmp_path / "img", tmp_path / "p", image_size=6, decode_workers=2)
    serial.setup()
    parallel.setup()
    assert serial.cache.files == parallel.cache.files
    np.testing.assert_array_equal(np.asarray(serial.cache.images), np.asarray(parallel.cache.images))


@pytest.mark.slow
def test_ddp_decodes_once_and_ranks_share_the_cache(tmp_path: Path) -> None:
    write_id_folder(tmp_path / "img", 36)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, str(Path(__file__).parent / "ddp_folder_worker.py"), str(tmp_path / "img"),
                          str(tmp_path)], env=env, cwd=tmp_path, timeout=300, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "decodes.txt").read_text() == "0\n"  # decoded by rank 0 only, once
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    (cache,) = (tmp_path / "cache").iterdir()  # one cache, no partial left, both ranks mapped it
    assert ranks[0]["cache"] == ranks[1]["cache"] == str(cache)
    seen = [torch.cat(r["ids"]).tolist() for r in ranks]  # 32 training images, 2 ranks: disjoint halves
    assert len(seen[0]) == len(seen[1]) == 16 and not set(seen[0]) & set(seen[1])
