"""Training throughput: our Autoencoder through ``Trainer.fit`` with ``MNISTDataModule`` versus a minimal
hand-written PyTorch loop doing the same work (same network, in-memory uint8 data indexed per batch, same
conversion, loss, optimizer and batch size). Runs alternate between the two in one run; medians are reported.

    LIGHTNING_AE_DATA=../shared/data python benchmarks/throughput.py --batch-size 128

Floor (issue 2): ours >= 0.90 x the loop's images/s at batch size 128.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, Trainer, seed_everything

from lightning_ae import Autoencoder, MNISTDataModule


class EpochTimer(Callback):
    """Wall time and image count of each training epoch (excludes Trainer start-up)."""

    def __init__(self) -> None:
        self.start = (0.0, 0.0)
        self.seconds = (0.0, 0.0)
        self.images = 0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.images = 0
        self.start = (time.perf_counter(), time.process_time())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.images += batch[0].shape[0]

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds = (time.perf_counter() - self.start[0], time.process_time() - self.start[1])


def lightning_epoch(data: MNISTDataModule, model: Autoencoder, steps: int) -> tuple[float, float]:
    """Images/s of ``steps`` training steps through Trainer.fit: (wall clock, process CPU time)."""
    timer = EpochTimer()
    trainer = Trainer(max_epochs=1, limit_train_batches=steps, accelerator="cpu", devices=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      limit_val_batches=0, num_sanity_val_steps=0, callbacks=[timer])
    trainer.fit(model, datamodule=data)
    return timer.images / timer.seconds[0], timer.images / timer.seconds[1]


def loop_epoch(images: torch.Tensor, model: Autoencoder, batch_size: int, steps: int) -> tuple[float, float]:
    """The minimal loop, what any PyTorch user would write: images/s as (wall clock, process CPU time)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    encoder, decoder = model.encoder, model.decoder
    model.train()
    start, cpu_start = time.perf_counter(), time.process_time()
    order = torch.randperm(images.shape[0])
    seen = 0
    for i in range(0, min(images.shape[0] - batch_size + 1, steps * batch_size), batch_size):
        x = images[order[i : i + batch_size]].float().div_(255)
        loss = F.binary_cross_entropy_with_logits(decoder(encoder(x)), x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += x.shape[0]
    return seen / (time.perf_counter() - start), seen / (time.process_time() - cpu_start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=9, help="runs of each, alternating")
    parser.add_argument("--steps", type=int, default=100, help="training steps per run")
    parser.add_argument("--data-dir", default=os.environ.get("LIGHTNING_AE_DATA"))
    args = parser.parse_args()
    if not args.data_dir:
        parser.error("set LIGHTNING_AE_DATA or --data-dir to the folder holding MNIST/raw")
    seed_everything(0, verbose=False)
    data = MNISTDataModule(data_dir=args.data_dir, download=False, batch_size=args.batch_size)
    data.setup("fit")
    images = data.train_set.images
    ours, loop = [], []
    loop_epoch(images, Autoencoder(recon_loss="bce"), args.batch_size, args.steps)  # warm-up
    for _ in range(args.repeats):
        loop.append(loop_epoch(images, Autoencoder(recon_loss="bce"), args.batch_size, args.steps))
        ours.append(lightning_epoch(data, Autoencoder(recon_loss="bce"), args.steps))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"Autoencoder MLP 784-512-256-32-256-512-784, BCE, Adam, MNIST {images.shape[0]} train images, "
          f"batch {args.batch_size}, {args.repeats} alternating runs of {args.steps} steps each")
    print("| run | images/s, wall clock (median) | images/s, process CPU time (median) | wall clock, all runs |")
    print("| --- | --- | --- | --- |")
    for name, runs in (("hand-written loop", loop), ("lightning-ae Trainer.fit", ours)):
        wall, cpu = [r[0] for r in runs], [r[1] for r in runs]
        print(f"| {name} | {statistics.median(wall):,.0f} | {statistics.median(cpu):,.0f} | "
              f"{', '.join(f'{v:,.0f}' for v in wall)} |")
    for i, clock in enumerate(("wall clock", "CPU time")):
        ratio = statistics.median(r[i] for r in ours) / statistics.median(r[i] for r in loop)
        print(f"ratio ours/loop ({clock}): {ratio:.3f} (floor 0.90)")

if __name__ == "__main__":
    main()
