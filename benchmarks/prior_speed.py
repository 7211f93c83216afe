"""TransformerPrior speed: sampling with the KV cache against recomputing the whole prefix at 256 positions (a 16x16
code grid), and training throughput on cached codes against a hand-written PyTorch loop of the same transformer.

    python benchmarks/prior_speed.py --threads 2 --repeats 3

Sampling: ``sample_indices`` of ``--samples`` class-conditional grids (a VQ-VAE over 64x64 RGB images has a 16x16
grid; K=1024) by a transformer of the CIFAR-10 config's size (dim 256, 6 layers, 8 heads), with and without
guidance, ``use_cache`` True and False alternating, ``--repeats`` times; images/s counts code grids drawn (decoding
them, the same work either way, is left out). Training: ``Trainer.fit`` of the MNIST config's transformer (dim 128,
4 layers, 4 heads) on a :class:`~lightning_ae.CodeDataModule` cache of 7x7 codes, against a loop that reads the same
cache file, draws the same batches and runs the same network, loss and AdamW; the two alternate, ``--repeats``
times each, and we report the median per-step time, its spread and the ratio loop/ours (1.0: no overhead), also per
CPU second. Weights are random: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer

sys.path.insert(0, str(Path(__file__).parent))
from timing import StepTimer

from lightning_ae import VQVAE, CodeDataModule, FakeImageDataModule, TransformerPrior, VectorQuantizer


def vqvae_folder(root: Path, image_shape: tuple[int, int, int], num_codes: int) -> Path:
    torch.manual_seed(0)
    model = VQVAE(image_shape=image_shape, latent_dim=32, hidden_channels=32, res_channels=16,
                  quantizer=VectorQuantizer(num_codes, code_dim=32))
    return model.save_pretrained(root / f"vqvae-{image_shape[1]}")


# ---- sampling ------------------------------------------------------------------------------------------------------
def sampling(root: Path, args: argparse.Namespace) -> dict:
    folder = vqvae_folder(root, (3, 64, 64), 1024)
    prior = TransformerPrior(str(folder), dim=256, num_layers=6, num_heads=8, num_classes=10,
                             image_shape=(3, 64, 64)).eval()
    assert prior.grid_shape == (16, 16)
    labels = torch.arange(args.samples) % 10
    out: dict = {"positions": 256, "samples": args.samples}
    for cfg in (1.0, 2.0):
        times: dict[str, list[float]] = {"cache": [], "recompute": []}
        for _ in range(args.repeats):
            for name, use_cache in (("cache", True), ("recompute", False)):
                start = time.perf_counter()
                prior.sample_indices(args.samples, torch.Generator().manual_seed(0), labels=labels, cfg_scale=cfg,
                                     use_cache=use_cache)
                times[name].append(time.perf_counter() - start)
        rates = {k: [args.samples / t for t in v] for k, v in times.items()}
        speedups = [r / c for c, r in zip(times["cache"], times["recompute"], strict=True)]
        out[f"cfg{cfg:g}"] = {"images_per_s": rates, "speedup": speedups}
        print(f"sampling cfg {cfg:g}: cache {statistics.median(rates['cache']):.2f} images/s, recompute "
              f"{statistics.median(rates['recompute']):.2f} images/s; speedup median {statistics.median(speedups):.2f}"
              f" (min {min(speedups):.2f}, max {max(speedups):.2f})", flush=True)
    return out


# ---- training ------------------------------------------------------------------------------------------------------
def adamw(params: object) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.01)  # type: ignore[arg-type]


def small_prior(folder: Path) -> TransformerPrior:
    torch.manual_seed(0)
    return TransformerPrior(str(folder), dim=128, num_layers=4, num_heads=4, dropout=0.1, num_classes=10,
                            optimizer=adamw)


def ours(folder: Path, data: CodeDataModule, steps: int, warmup: int) -> tuple[float, float]:
    prior = small_prior(folder)
    timer = StepTimer(warmup)
    trainer = Trainer(max_steps=steps + warmup, accelerator="cpu", devices=1, logger=False, limit_val_batches=0,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[timer], num_sanity_val_steps=0)
    trainer.fit(prior, datamodule=data)
    return timer.wall_s / steps, timer.cpu_s / steps


def loop(folder: Path, cache: Path, steps: int, warmup: int, batch_size: int) -> tuple[float, float]:
    """The minimal PyTorch loop: the same network, class-token dropout, loss and optimizer on the cached codes."""
    prior = small_prior(folder).train()
    net = prior.transformer
    opt = adamw(net.parameters())
    codes = torch.from_numpy(np.load(cache / "codes.npy", mmap_mode="c"))  # (N, 7, 7) int16
    labels = torch.from_numpy(np.load(cache / "labels.npy")).long()
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(codes), generator=gen).split(batch_size)
    start = cpu = 0.0
    for step in range(steps + warmup):
        idx = order[step % len(order)]
        x = codes[idx].long().flatten(1)[..., None]  # (B, 49, 1)
        y = labels[idx].masked_fill(torch.rand(len(idx)) < 0.1, net.null_class)
        loss = F.cross_entropy(net(x, y).flatten(0, 2).float(), x.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step + 1 == warmup:
            start, cpu = time.perf_counter(), time.process_time()
    return (time.perf_counter() - start) / steps, (time.process_time() - cpu) / steps


def training(root: Path, args: argparse.Namespace) -> dict:
    folder = vqvae_folder(root, (1, 28, 28), 512)
    images = FakeImageDataModule(image_shape=(1, 28, 28), num_train=args.train_images + 64, val_size=64,
                                 batch_size=args.batch_size)
    data = CodeDataModule(images, cache_dir=str(root / "codes"), batch_size=args.batch_size)
    ours(folder, data, 1, 1)  # builds the cache (not timed)
    (cache,) = (root / "codes").glob("train-*")
    runs: dict[str, list[tuple[float, float]]] = {"ours": [], "loop": []}
    for _ in range(args.repeats):
        runs["ours"].append(ours(folder, data, args.steps, args.warmup))
        runs["loop"].append(loop(folder, cache, args.steps, args.warmup, args.batch_size))
    ratios = [lp[0] / o[0] for o, lp in zip(runs["ours"], runs["loop"], strict=True)]
    cpu_ratios = [lp[1] / o[1] for o, lp in zip(runs["ours"], runs["loop"], strict=True)]
    ms = {k: [1000 * w for w, _ in v] for k, v in runs.items()}
    print(f"training: ours {statistics.median(ms['ours']):.1f} ms/step ({min(ms['ours']):.1f}-{max(ms['ours']):.1f}), "
          f"loop {statistics.median(ms['loop']):.1f} ms/step ({min(ms['loop']):.1f}-{max(ms['loop']):.1f}); "
          f"loop/ours median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f}); "
          f"per CPU second {statistics.median(cpu_ratios):.3f}", flush=True)
    return {"batch_size": args.batch_size, "steps": args.steps, "ms_per_step": ms, "ratio_wall": ratios,
            "ratio_cpu": cpu_ratios}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=16, help="code grids per sampling run")
    parser.add_argument("--steps", type=int, default=60, help="timed training steps per run")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--train-images", type=int, default=8192)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/prior_speed.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        result = {"threads": args.threads, "repeats": args.repeats, "torch": torch.__version__,
                  "sampling": sampling(Path(tmp), args), "training": training(Path(tmp), args)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
