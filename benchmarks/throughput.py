r"""Training throughput: our model through ``Trainer.fit`` with ``MNISTDataModule`` versus a minimal hand-written
PyTorch loop doing the same work (same network, in-memory uint8 data indexed per batch, same conversion, loss,
optimizer and batch size). Runs alternate between the two in one run; medians are reported.

    LIGHTNING_AE_DATA=path/to/data python benchmarks/throughput.py --batch-size 128
    # on a GPU: bf16 autocast, compiled networks, the dataset held on the device
    python benchmarks/throughput.py --accelerator gpu --precision bf16-mixed --compile --on-device
    # where a step's time goes (cProfile of the Trainer.fit path, our code vs Lightning's)
    python benchmarks/throughput.py --profile 300
    # per-step overheads in microseconds: the tiny model, steady steps only, many short alternating runs
    python benchmarks/throughput.py --model tiny --batch-size 16 --steps 1000 --repeats 41 --steady \
        --loop-gather index_select

``--model ae`` (default) is the headline benchmark: its loop is written out by hand (encoder, decoder, BCE);
``--model tiny`` the same with a 784-16-2-16-784 MLP, whose step is almost all fixed cost (the per-step overheads
in microseconds are then least buried in the noise of the arithmetic). With
``--model vae`` / ``--model vqvae`` the loop calls our ``loss_terms`` directly, so the ratio is the cost of
Lightning and our step around the same loss. Floor: ours >= 0.90 x the loop; target: >= 0.95
at batch 128 on a quiet machine.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import random
import statistics
import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything

from lightning_ae import VAE, VQVAE, Autoencoder, AutoencoderBase, MNISTDataModule, VectorQuantizer
from lightning_ae.nets import MLPDecoder, MLPEncoder

MODELS = {"ae": lambda **kw: Autoencoder(recon_loss="bce", **kw), "vae": lambda **kw: VAE(**kw),
          # a 784-16-2-16-784 MLP: a step is mostly fixed per-step costs (the Trainer's, our step's, the loader's)
          "tiny": lambda **kw: Autoencoder(recon_loss="bce", latent_dim=2,
                                           encoder=MLPEncoder(out_dim=2, hidden_dims=(16,)),
                                           decoder=MLPDecoder(latent_dim=2, hidden_dims=(16,)), **kw),
          "vqvae": lambda **kw: VQVAE(latent_dim=16, quantizer=VectorQuantizer(128, 16), hidden_channels=64,
                                      res_channels=32, **kw)}


def synchronize(device: torch.device) -> None:
    """Waits for the device's queued work (a GPU's clock must not stop before its kernels do)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class EpochTimer(Callback):
    """Wall time and image count of each training epoch (excludes Trainer start-up). With ``steady``, the clock
    starts at the end of the first batch: the loader's iterator, the first fetch and the epoch's start and end hooks
    (per-epoch costs) are left out, so what is timed is the steady per-step cost."""

    def __init__(self, steady: bool = False) -> None:
        self.steady = steady
        self.start = (0.0, 0.0)
        self.seconds = (0.0, 0.0)
        self.images = 0

    def restart(self, pl_module: LightningModule) -> None:
        synchronize(pl_module.device)
        self.images = 0
        self.start = (time.perf_counter(), time.process_time())

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.restart(pl_module)

    def stop(self, pl_module: LightningModule) -> None:
        synchronize(pl_module.device)
        self.seconds = (time.perf_counter() - self.start[0], time.process_time() - self.start[1])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.steady and batch_idx == 0:
            self.restart(pl_module)
            return
        self.images += (batch if isinstance(batch, torch.Tensor) else batch[0]).shape[0]
        if self.steady:  # the epoch's end hooks come after the last batch: stop at every batch, the last one counts
            self.stop(pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self.steady:
            self.stop(pl_module)


def lightning_epoch(data: MNISTDataModule, model: AutoencoderBase, steps: int, args: argparse.Namespace
                    ) -> tuple[float, float]:
    """Images/s of ``steps`` training steps through Trainer.fit: (wall clock, process CPU time)."""
    timer = EpochTimer(args.steady)
    trainer = Trainer(max_epochs=1, limit_train_batches=steps, accelerator=args.accelerator, devices=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      limit_val_batches=0, num_sanity_val_steps=0, callbacks=[timer], precision=args.precision)
    trainer.fit(model, datamodule=data)
    return timer.images / timer.seconds[0], timer.images / timer.seconds[1]


class BareModule(LightningModule):
    """The smallest LightningModule doing the loop's work: Lightning's own per-step cost, without ours."""

    def __init__(self, model: AutoencoderBase, args: argparse.Namespace) -> None:
        super().__init__()
        self.model, self.ae = model, args.model in ("ae", "tiny")

    def training_step(self, x: torch.Tensor, batch_idx: int) -> torch.Tensor:
        if self.ae:
            return F.binary_cross_entropy_with_logits(self.model.decoder(self.model.encoder(x)), x)
        return self.model.loss_terms(x, "train").loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


class LoopBatches:
    """The loop's batches as an iterable that ``Trainer.fit`` takes as its train dataloader."""

    def __init__(self, images: torch.Tensor, args: argparse.Namespace, device: torch.device) -> None:
        self.images, self.args, self.device = images, args, device

    def __iter__(self) -> Iterator[torch.Tensor]:
        return batches(self.images, self.args.batch_size, self.args.steps, self.device, self.args.loop_gather)

    def __len__(self) -> int:
        return min(self.images.shape[0] // self.args.batch_size, self.args.steps)


def loop_batches_epoch(images: torch.Tensor, module: LightningModule, args: argparse.Namespace, device: torch.device
               ) -> tuple[float, float]:
    """Images/s of the loop's batches through ``Trainer.fit`` (wall, CPU): on :class:`BareModule`, Lightning's own
    cost; on our model, Lightning's and our step's (without our datamodule)."""
    timer = EpochTimer(args.steady)
    trainer = Trainer(max_epochs=1, accelerator=args.accelerator, devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      callbacks=[timer], precision=args.precision)
    trainer.fit(module, train_dataloaders=LoopBatches(images, args, device))
    return timer.images / timer.seconds[0], timer.images / timer.seconds[1]


def batches(images: torch.Tensor, batch_size: int, steps: int, device: torch.device, gather: str = "index"
            ) -> Iterator[torch.Tensor]:
    """Shuffled float batches in [0, 1] on ``device``, each one indexing of the uint8 images (wherever they are):
    ``images[idx]`` (``gather="index"``, what a hand-written loop writes) or ``images.index_select(0, idx)`` (what
    our datasets do; benchmarks/batch_gather.py)."""
    order = torch.randperm(images.shape[0], device=images.device)
    for i in range(0, min(images.shape[0] - batch_size + 1, steps * batch_size), batch_size):
        idx = order[i : i + batch_size]
        x = images[idx] if gather == "index" else images.index_select(0, idx)
        yield x.to(device, non_blocking=True).float().div_(255)


def loop_epoch(images: torch.Tensor, model: AutoencoderBase, args: argparse.Namespace, device: torch.device
               ) -> tuple[float, float]:
    """The minimal loop, what any PyTorch user would write: images/s as (wall clock, process CPU time)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    encoder, decoder = model.encoder, model.decoder
    model.train()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16-mixed")
    synchronize(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    seen = 0
    for step, x in enumerate(batches(images, args.batch_size, args.steps, device, args.loop_gather)):
        if args.steady and step == 1:  # the clock from the end of the first step, as EpochTimer(steady=True)
            synchronize(device)
            start, cpu_start, seen = time.perf_counter(), time.process_time(), 0
        with autocast:
            if args.model in ("ae", "tiny"):
                loss = F.binary_cross_entropy_with_logits(decoder(encoder(x)), x)
            else:
                loss = model.loss_terms(x, "train").loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += x.shape[0]
    synchronize(device)
    return seen / (time.perf_counter() - start), seen / (time.process_time() - cpu_start)


def profile(data: MNISTDataModule, model: AutoencoderBase, args: argparse.Namespace) -> None:
    """cProfile of ``args.profile`` steps of the Trainer.fit path: our functions, then Lightning's loop."""
    lightning_epoch(data, model, 10, args)  # warm-up
    profiler = cProfile.Profile()
    with profiler:
        lightning_epoch(data, model, args.profile, args)
    stats = pstats.Stats(profiler).sort_stats("cumulative")
    print(f"---- {args.profile} steps; cumulative seconds; divide by {args.profile} for per-step cost ----")
    stats.print_stats(r"lightning_ae/(models|data|batch)", 25)
    stats.print_stats(r"lightning/pytorch/(loops|trainer|core)", 25)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=9, help="runs of each, alternating")
    parser.add_argument("--steps", type=int, default=100, help="training steps per run")
    parser.add_argument("--data-dir", default=os.environ.get("LIGHTNING_AE_DATA"))
    parser.add_argument("--model", choices=sorted(MODELS), default="ae")
    parser.add_argument("--accelerator", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--precision", choices=["32-true", "bf16-mixed"], default="32-true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the networks (both paths)")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend (aot_eager: traced, no code generated; gpu.sh's CPU smoke mode)")
    parser.add_argument("--on-device", action="store_true", help="hold the uint8 dataset on the device")
    parser.add_argument("--loop-gather", choices=["index", "index_select"], default="index",
                        help="how the loop (and the bare module) gathers a batch: images[idx], as a hand-written loop "
                             "does, or index_select, as our datasets do (then only Lightning and our step differ)")
    parser.add_argument("--steady", action="store_true",
                        help="time each run from the end of its first step (per-step costs only, without the "
                             "per-epoch ones: the loader's iterator, the first fetch, the epoch hooks)")
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS", help="profile instead of timing")
    parser.add_argument("--json", help="write the medians and ratios to this file")
    args = parser.parse_args()
    if not args.data_dir:
        parser.error("set LIGHTNING_AE_DATA or --data-dir to the folder holding MNIST/raw")
    if args.accelerator == "gpu" and not torch.cuda.is_available():
        parser.error("--accelerator gpu: torch sees no CUDA device")
    return args


RUNS = {"loop": "hand-written loop", "bare": "bare LightningModule, Trainer.fit, loop batches",
        "step": "our model, Trainer.fit, loop batches", "ours": "our model + MNISTDataModule, Trainer.fit"}
RATIOS = (("ours/loop", "ours", "loop"), ("bare/loop", "bare", "loop"), ("step/bare", "step", "bare"),
          ("ours/step", "ours", "step"), ("ours/bare", "ours", "bare"))
# the per-step overheads report() prints, as (what the difference is, minuend run, subtrahend run)
OVERHEADS = (("Lightning", "bare", "loop"), ("our step", "step", "bare"), ("our step + datamodule", "ours", "bare"))


def overhead_key(num: str, den: str) -> str:
    """report()'s result key of the wall-clock overhead ``num - den`` in us per step (``_cpu`` appended: CPU time)."""
    return f"overhead_us_{num}_{den}"


def median_ci(values: list[float], level: float = 0.9, resamples: int = 2000) -> list[float]:
    """Bootstrap interval of the median of ``values`` (percentile method, seeded): how far the median of the
    paired differences can be trusted on a noisy machine."""
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    tail = int(resamples * (1 - level) / 2)
    return [medians[tail], medians[-tail - 1]]


def report(args: argparse.Namespace, n_images: int, runs: dict[str, list[tuple[float, float]]]) -> dict:
    """Prints the markdown table and ratios; returns them as a dict.

    ``bare/loop`` is Lightning's own cost, ``step/bare`` our model's step over a bare one (same batches),
    ``ours/step`` our datamodule's over the loop's batches; ``ours/loop`` is the headline figure.
    """
    device = torch.cuda.get_device_name() if args.accelerator == "gpu" else platform.processor() or platform.machine()
    print(f"machine: {device}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{args.model}, MNIST {n_images} train images, batch {args.batch_size}, {args.precision}, compile "
          f"{args.compile}, on_device {args.on_device}, {args.repeats} alternating runs of {args.steps} steps each")
    print("| run | images/s, wall clock (median) | images/s, process CPU time (median) | wall clock, all runs |")
    print("| --- | --- | --- | --- |")
    for key, name in RUNS.items():
        wall, cpu = [r[0] for r in runs[key]], [r[1] for r in runs[key]]
        print(f"| {name} | {statistics.median(wall):,.0f} | {statistics.median(cpu):,.0f} | "
              f"{', '.join(f'{v:,.0f}' for v in wall)} |")
    paths = ("data_dir", "json")  # where files were on the machine that ran it: not part of the result
    result: dict = {"args": {k: v for k, v in vars(args).items() if k not in paths}, "device": device, **runs}
    for i, clock in enumerate(("wall clock", "CPU time")):
        key = clock.replace(" ", "_")
        for name, num, den in RATIOS:
            ratio = statistics.median(r[i] for r in runs[num]) / statistics.median(r[i] for r in runs[den])
            paired = sorted(a[i] / b[i] for a, b in zip(runs[num], runs[den], strict=True))  # run by run: the spread
            result[f"ratio_{name.replace('/', '_')}_{key}"] = ratio
            print(f"ratio {name} ({clock}): {ratio:.3f} (run by run {paired[0]:.3f} .. {paired[-1]:.3f})")
    result["ratio_wall_clock"] = result["ratio_ours_loop_wall_clock"]  # the headline figure
    step_us = {key: statistics.median(args.batch_size / r[0] * 1e6 for r in runs[key]) for key in RUNS}
    result["step_us_wall_clock"] = step_us
    print("per step (wall clock, median): " + ", ".join(f"{key} {us:,.0f} us" for key, us in step_us.items()))
    for what, num, den in OVERHEADS:
        for i, clock in enumerate(("wall clock", "CPU time")):  # paired run by run: the spread is the noise's
            paired = sorted(args.batch_size * (1 / a[i] - 1 / b[i]) * 1e6 for a, b in zip(runs[num], runs[den],
                                                                                            strict=True))
            quartiles = statistics.quantiles(paired, n=4) if len(paired) > 1 else [paired[0]] * 3
            key = overhead_key(num, den) + ("" if i == 0 else "_cpu")
            result[key] = statistics.median(paired)
            result[key + "_quartiles"] = [quartiles[0], quartiles[2]]
            result[key + "_ci90"] = ci = median_ci(paired)
            print(f"overhead {num} - {den} ({what}), {clock}: {statistics.median(paired):,.0f} us per step (90% "
                  f"interval of the median {ci[0]:,.0f} .. {ci[1]:,.0f}; quartiles {quartiles[0]:,.0f} .. "
                  f"{quartiles[2]:,.0f}; run by run {paired[0]:,.0f} .. {paired[-1]:,.0f})")
    print("floors: ours/loop >= 0.90 at batch 128, ours - bare <= 100 us per step; bare/loop is Lightning's own cost, "
          "step/bare our step's, ours/step our datamodule's")
    return result


def main() -> None:
    args = parse_args()
    seed_everything(0, verbose=False)
    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    data = MNISTDataModule(data_dir=args.data_dir, download=False, batch_size=args.batch_size,
                           on_device=args.on_device)
    data.setup("fit")
    images = data.train_set.images.to(device) if args.on_device else data.train_set.images
    options = {"compile_networks": True} if args.compile else {}
    if args.compile and args.compile_backend != "inductor":
        options["compile_options"] = {"backend": args.compile_backend}
    ours_model, loop_model = MODELS[args.model](**options), MODELS[args.model](**options).to(device)
    bare_module = BareModule(MODELS[args.model](**options), args)
    if args.compile:
        loop_model.compile_now()
        bare_module.model.compile_now()
    if args.profile:
        profile(data, ours_model, args)
        return
    loop_epoch(images, loop_model, args, device)  # warm-up (and compilation) of both
    lightning_epoch(data, ours_model, min(args.steps, 10), args)
    loop_batches_epoch(images, bare_module, args, device)
    loop_batches_epoch(images, ours_model, args, device)
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in RUNS}
    for _ in range(args.repeats):
        runs["loop"].append(loop_epoch(images, loop_model, args, device))
        runs["bare"].append(loop_batches_epoch(images, bare_module, args, device))
        runs["step"].append(loop_batches_epoch(images, ours_model, args, device))
        runs["ours"].append(lightning_epoch(data, ours_model, args.steps, args))
    result = report(args, images.shape[0], runs)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
