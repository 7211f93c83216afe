"""LitData streaming: a folder prepared with lightning-ae-prepare, read back exactly, and trained on by 2 DDP ranks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("litdata")

from lightning_ae.data import ImageDecodeError
from lightning_ae.data.streaming import StreamingImageDataModule, prepare_streaming
from tests.conftest import write_id_folder

ROOT = Path(__file__).parents[1]


def _ids(images: torch.Tensor) -> list[int]:
    return (images[:, 0, 0, 0].long() * 256 + images[:, 0, 0, 1].long()).tolist()


@pytest.mark.slow
def test_prepare_and_read_back(tmp_path: Path) -> None:
    labels = write_id_folder(tmp_path / "img", 20)
    meta = prepare_streaming(str(tmp_path / "img"), str(tmp_path / "out"), image_size=8, resize="none", val_size=4,
                             test_size=2, workers=2)
    assert meta == {"image_shape": [3, 8, 8], "class_names": ["a", "b"], "num_classes": 2,
                    "sizes": {"train": 14, "val": 4, "test": 2}}
    data = StreamingImageDataModule(input_dir=str(tmp_path / "out"), batch_size=5, eval_batch_size=3,
                                    cache_dir=str(tmp_path / "chunks"))
    assert data.image_shape == (3, 8, 8) and data.num_classes == 2 and data.class_names == ["a", "b"]
    data.setup("fit")
    seen = {}
    for split, loader in (("train", data.train_dataloader()), ("val", data.val_dataloader()),
                          ("test", data.test_dataloader())):
        ids = []
        for images, y in loader:
            assert images.dtype == torch.uint8 and images.shape[1:] == (3, 8, 8)
            ids += _ids(images)
            seen.update(zip(_ids(images), y.tolist(), strict=True))
        assert len(ids) == len(set(ids)) == {"train": 10, "val": 4, "test": 2}[split]  # training drops a part batch
    train = set(_ids_of_split(tmp_path / "out"))
    assert len(train) == 14 and len(set(seen) | train) == 20
    assert {i: labels[i] for i in seen} == seen  # each with its folder's label
    assert 0 < data.pixel_variance() < 0.1


@pytest.mark.slow
def test_prepare_names_a_corrupt_file(tmp_path: Path) -> None:
    write_id_folder(tmp_path / "img", 6)
    (tmp_path / "img" / "a" / "0002.png").write_bytes(b"broken")
    with pytest.raises(ImageDecodeError, match=r"a/0002.png"):
        prepare_streaming(str(tmp_path / "img"), str(tmp_path / "out"), image_size=8, val_size=0, test_size=0,
                          workers=1)


@pytest.mark.slow
def test_ddp_two_ranks_see_every_image_once_per_epoch(tmp_path: Path) -> None:
    write_id_folder(tmp_path / "img", 48)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "lightning_ae.data", str(tmp_path / "img"), str(tmp_path / "out"),
                    "--image_size", "8", "--resize", "none", "--val_size", "8", "--test_size", "8",
                    "--workers", "2"], check=True, env=env, cwd=tmp_path, timeout=300)
    subprocess.run([sys.executable, str(ROOT / "tests" / "ddp_streaming_worker.py"), str(tmp_path / "out"),
                    str(tmp_path), "2"], check=True, env=env, cwd=tmp_path, timeout=300)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert all(r["world_size"] == 2 for r in ranks)
    train_ids = set(_ids_of_split(tmp_path / "out"))
    assert len(train_ids) == 32
    orders = []
    for epoch in range(2):  # 32 training images, batch 4, 2 ranks: 4 batches per rank per epoch
        seen = [torch.cat(r["ids"][epoch * 4: (epoch + 1) * 4]).tolist() for r in ranks]
        assert len(seen[0]) == len(seen[1]) == 16
        assert sorted(seen[0] + seen[1]) == sorted(train_ids)  # every image exactly once over both ranks
        orders.append(seen[0])
    assert len(ranks[0]["ids"]) == 8 and orders[0] != orders[1]  # reshuffled each epoch
    torch.testing.assert_close(ranks[0]["weights"], ranks[1]["weights"], rtol=0, atol=0)


def _ids_of_split(out: Path, split: str = "train") -> list[int]:
    import litdata

    dataset = litdata.StreamingDataset(str(out / split))
    return [int(dataset[i]["image"][0, 0, 0]) * 256 + int(dataset[i]["image"][0, 0, 1]) for i in range(len(dataset))]
