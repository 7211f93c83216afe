"""How a batch is gathered from the in-memory uint8 images: advanced indexing (``images[idx]``, what a hand-written
loop writes) against ``images.index_select(0, idx)`` (what our datasets do), on the real MNIST and CIFAR-10 training
images, per batch size; interleaved repetitions, medians with their quartiles, one thread.

    LIGHTNING_AE_DATA=path/to/data LIGHTNING_AE_CIFAR10=path/to/cifar python benchmarks/batch_gather.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from lightning_ae import CIFAR10DataModule, MNISTDataModule

GATHERS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "images[idx]": lambda images, idx: images[idx],
    "index_select": lambda images, idx: images.index_select(0, idx),
}


def time_gather(gather: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], images: torch.Tensor,
                batches: list[torch.Tensor]) -> float:
    """Microseconds per batch of ``gather`` over ``batches`` of indices."""
    start = time.perf_counter()
    for idx in batches:
        gather(images, idx)
    return (time.perf_counter() - start) / len(batches) * 1e6


def measure(images: torch.Tensor, batch_size: int, repeats: int, steps: int) -> dict[str, dict[str, float]]:
    """Median and quartiles (µs per batch) of each gather, alternating, over shuffled batches of ``images``."""
    order = torch.randperm(images.shape[0])
    batches = [order[i * batch_size:(i + 1) * batch_size] for i in range(min(steps, images.shape[0] // batch_size))]
    assert torch.equal(GATHERS["images[idx]"](images, batches[0]), GATHERS["index_select"](images, batches[0]))
    times: dict[str, list[float]] = {name: [] for name in GATHERS}
    for _ in range(repeats):
        for name, gather in GATHERS.items():
            times[name].append(time_gather(gather, images, batches))
    result = {}
    for name, values in times.items():
        q = statistics.quantiles(values, n=4)
        result[name] = {"median_us": statistics.median(values), "q1_us": q[0], "q3_us": q[2]}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("LIGHTNING_AE_DATA"))
    parser.add_argument("--cifar-dir", default=os.environ.get("LIGHTNING_AE_CIFAR10"))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 128, 512])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--steps", type=int, default=100, help="batches per repetition")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if not args.data_dir:
        parser.error("set LIGHTNING_AE_DATA or --data-dir to the folder holding MNIST/raw")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    sets = {"MNIST": MNISTDataModule(data_dir=args.data_dir, download=False)}
    if args.cifar_dir:
        sets["CIFAR-10"] = CIFAR10DataModule(data_dir=args.cifar_dir, download=False)
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
               "1 thread")
    print(f"machine: {machine}; {args.repeats} alternating repetitions of {args.steps} batches")
    print("| data | batch | images[idx] µs (median, quartiles) | index_select µs (median, quartiles) | speed-up |")
    print("| --- | --- | --- | --- | --- |")
    settings = {k: v for k, v in vars(args).items() if k in ("batch_sizes", "repeats", "steps")}  # no paths
    results: dict = {"machine": machine, "args": settings, "rows": []}
    for name, data in sets.items():
        data.setup("fit")
        images = data.train_set.images
        for batch_size in args.batch_sizes:
            row = measure(images, batch_size, args.repeats, args.steps)
            a, b = row["images[idx]"], row["index_select"]
            print(f"| {name} {tuple(images.shape[1:])} | {batch_size} | {a['median_us']:,.1f} ({a['q1_us']:,.1f}-"
                  f"{a['q3_us']:,.1f}) | {b['median_us']:,.1f} ({b['q1_us']:,.1f}-{b['q3_us']:,.1f}) | "
                  f"{a['median_us'] / b['median_us']:.1f}x |")
            results["rows"].append({"data": name, "batch_size": batch_size, **row})
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
