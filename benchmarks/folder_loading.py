"""ImageFolderDataModule vs the usual per-sample PIL loader, on an image folder.

(1) First run: decode throughput of ``prepare_data`` (``decode_workers`` processes, into a fresh cache) beside
one epoch of a per-sample ``Dataset`` that opens each file with PIL and converts it, in a ``DataLoader`` with the
same number of workers (timed from the folder: its file listing included, as our first run's scan is). (2) Later
runs: start-up from the cache (construct, ``prepare_data``, ``setup``, first batch) and training-batch throughput
(uint8 batches through ``on_after_batch_transfer`` to float, as delivered to the step) over three epochs: the
first also maps the cache file's pages into the process, the median of the other two is the steady state compared
with the per-sample loader. Floors: first run >= 1.0x the per-sample epoch, cached batches >= 20x, start-up < 5 s.
Run it with the files in the OS page cache (a second run), or the per-sample loader's first epoch reads the disk.

    python benchmarks/folder_loading.py --root .cache/cifar10-jpeg --workers 2 \\
        --out benchmarks/results/folder_loading.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from lightning_ae import ImageFolderDataModule
from lightning_ae.data.images import scan_folder


class PerSampleImages(Dataset):
    """The usual user code: one file opened, decoded and converted per ``__getitem__``."""

    def __init__(self, root: str) -> None:
        self.files, self.labels, _ = scan_folder(root)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.files[i]) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.uint8)
        return torch.from_numpy(array.transpose(2, 0, 1).copy()), self.labels[i]


def _to_step(images: torch.Tensor) -> torch.Tensor:
    return images.float().div_(255.0)  # what every datamodule's transform does first


def per_sample_epoch(root: str, workers: int, batch_size: int) -> dict[str, float]:
    """One epoch of the usual code, from the folder: listing the files (as every run of it does) and loading."""
    start, n = time.perf_counter(), 0
    dataset = PerSampleImages(root)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)
    for images, _ in loader:
        n += _to_step(images).shape[0]
    seconds = time.perf_counter() - start
    return {"images": n, "seconds": seconds, "images_per_s": n / seconds}


def _module(root: str, cache_dir: str, workers: int, batch_size: int, size: int) -> ImageFolderDataModule:
    return ImageFolderDataModule(root=root, image_size=size, resize="none", val_size=0, test_size=0,
                                 cache_dir=cache_dir, decode_workers=workers, batch_size=batch_size)


def first_run(root: str, cache_dir: str, workers: int, batch_size: int, size: int) -> dict[str, float]:
    data = _module(root, cache_dir, workers, batch_size, size)
    start = time.perf_counter()
    data.prepare_data()
    seconds = time.perf_counter() - start
    n = len(scan_folder(root)[0])
    return {"images": n, "seconds": seconds, "images_per_s": n / seconds}


def later_run(root: str, cache_dir: str, workers: int, batch_size: int, size: int) -> dict[str, float]:
    start = time.perf_counter()
    data = _module(root, cache_dir, workers, batch_size, size)
    data.prepare_data()
    data.setup("fit")
    loader = iter(data.train_dataloader())
    first = next(loader)
    startup = time.perf_counter() - start
    epochs = []
    for epoch in range(3):  # the first epoch also maps the cache file's pages into the process
        start, n = time.perf_counter(), 0
        for batch in [first, *loader] if epoch == 0 else data.train_dataloader():
            n += data.on_after_batch_transfer(batch, 0)[0].shape[0]
        epochs.append(n / (time.perf_counter() - start))
    return {"startup_s": startup, "images": n, "images_per_s_by_epoch": epochs,
            "images_per_s": statistics.median(epochs[1:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="image folder, e.g. the extracted cifar10-jpeg.tar.gz")
    parser.add_argument("--workers", type=int, default=2, help="decode workers and per-sample DataLoader workers")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="folder-bench-") as cache:
        results = {
            "per_sample_epoch": per_sample_epoch(args.root, args.workers, args.batch_size),
            "first_run": first_run(args.root, cache, args.workers, args.batch_size, args.image_size),
            "later_run": later_run(args.root, cache, args.workers, args.batch_size, args.image_size),
        }
    base = results["per_sample_epoch"]["images_per_s"]
    results["floors"] = {
        "first_run_vs_per_sample (>= 1.0)": results["first_run"]["images_per_s"] / base,
        "cached_batches_vs_per_sample (>= 20)": results["later_run"]["images_per_s"] / base,
        "startup_s (< 5)": results["later_run"]["startup_s"],
    }
    results["settings"] = vars(args) | {"torch": torch.__version__, "cpus": os.cpu_count()}
    print(json.dumps(results, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
