"""Training throughput (images/s) of the MNIST VAE: our ``Trainer.fit`` vs a hand-written loop vs pythae.

Usage (``LIGHTNING_AE_DATA`` must hold ``MNIST/raw``)::

    python -m benchmarks.vae_throughput [--reps 3] [--epochs 1] [--threads 1]

All three train the same networks (MLP 784-512-256-32, ReLU, Bernoulli decoder; Adam 1e-3, batch 128, one
reparameterized sample, analytic KL) on the same 60k MNIST images binarized once (seed 0), held in memory as
uint8; every batch is one indexing of that tensor followed by ``float() / 255``.

* ours: ``VAE`` + ``MNISTDataModule(binarize="static")`` through ``Trainer.fit`` (``logger=False,
  enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0``);
  the datamodule is set up before the clock starts; the clock covers the ``fit`` call.
* loop: a minimal PyTorch loop (shuffle, index, convert, forward, backward, step), no Lightning.
* pythae: pythae's ``VAE`` + ``BaseTrainer`` (its default loader, float data) on the same modules; the clock
  covers ``trainer.train()``.

Methods are interleaved in each repetition; the output gives median images/s per CPU-second of the process (the
work done: with one thread and a shared machine, wall time also counts waiting for a core) and per wall-second,
and the ratios to the loop.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from lightning.pytorch import Trainer, seed_everything

from lightning_ae.distributions import DiagonalGaussian, bernoulli_nll

sys.path.insert(0, str(Path(__file__).parent))  # runs as python benchmarks/<name>.py too
from vae_common import BATCH_SIZE, LR, make_vae, mnist, networks, pythae_model, pythae_trainer


class Clock:
    """Wall time and this process's CPU time of a block (with 1 thread, CPU time is the work done; on a shared
    machine wall time also counts the time the process waited for a core)."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def run_ours(dm, epochs: int) -> Clock:
    seed_everything(0)
    model = make_vae(*networks())
    trainer = Trainer(accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    with Clock() as clock:
        trainer.fit(model, datamodule=dm)
    return clock


def run_loop(images: torch.Tensor, epochs: int) -> Clock:
    seed_everything(0)
    encoder, decoder = networks()
    params = [*encoder.parameters(), *decoder.parameters()]
    optimizer = torch.optim.Adam(params, lr=LR)
    with Clock() as clock:
        _loop(encoder, decoder, optimizer, images, epochs)
    return clock


def _loop(encoder: torch.nn.Module, decoder: torch.nn.Module, optimizer: torch.optim.Optimizer,
          images: torch.Tensor, epochs: int) -> None:
    for _ in range(epochs):
        perm = torch.randperm(images.shape[0])
        for i in range(0, images.shape[0], BATCH_SIZE):
            x = images[perm[i:i + BATCH_SIZE]].float().div_(255.0)
            q = DiagonalGaussian.from_params(encoder(x))
            loss = bernoulli_nll(decoder(q.rsample()), x).mean() + q.kl().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


def run_pythae(images: torch.Tensor, epochs: int) -> Clock:
    seed_everything(0)
    model = pythae_model(*networks())
    with tempfile.TemporaryDirectory() as tmp:
        trainer = pythae_trainer(model, images.float() / 255.0, epochs, tmp)
        with Clock() as clock:
            trainer.train()
        return clock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the 2 cores are shared)")
    parser.add_argument("--no-pythae", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dm = mnist("static")
    images = dm.train_set.images
    n_images = images.shape[0] * args.epochs  # all three see every image once per epoch (last batch partial)
    methods = {"ours": lambda: run_ours(dm, args.epochs), "loop": lambda: run_loop(images, args.epochs)}
    if not args.no_pythae:
        methods["pythae"] = lambda: run_pythae(images, args.epochs)
    clocks: dict[str, list[Clock]] = {name: [] for name in methods}
    for rep in range(args.reps):
        for name, fn in methods.items():
            clocks[name].append(fn())
            print(f"rep {rep} {name}: wall {clocks[name][-1].wall:.2f} s, cpu {clocks[name][-1].cpu:.2f} s", flush=True)
    out: dict = {"threads": args.threads, "epochs": args.epochs, "reps": args.reps}
    for kind in ("cpu", "wall"):
        rates = {name: n_images / statistics.median(getattr(c, kind) for c in cs) for name, cs in clocks.items()}
        out[f"images_per_{kind}_s"] = {k: round(v, 1) for k, v in rates.items()}
        out[f"ratio_to_loop_{kind}"] = {k: round(v / rates["loop"], 3) for k, v in rates.items()}
        out[f"{kind}_seconds"] = {k: [round(getattr(c, kind), 2) for c in cs] for k, cs in clocks.items()}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
