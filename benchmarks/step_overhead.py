r"""Per-step overheads in microseconds, paired block by block: the hand-written loop, a bare LightningModule through
``Trainer.fit``, our model on the loop's batches and our model with ``MNISTDataModule``, each training in its own
thread, all four alive at once, taking turns of ``--block-steps`` steps.

    LIGHTNING_AE_DATA=path/to/data OMP_NUM_THREADS=1 python benchmarks/step_overhead.py --batch-size 128 \
        --rounds 400 --block-steps 20

Why: ``throughput.py --steady`` compares whole runs (one ``Trainer.fit`` each, one after the other), so two runs
being compared are seconds apart, and on a shared machine the speed of the CPU drifts by 10-20% between them:
differences of a few hundred microseconds per step stay inside the noise. Here only one thread runs at a time (a
baton passed at the end of a block; the others wait on a condition, holding no CPU), each block is timed from the
end of a step to the end of the step ``--block-steps`` later (steady steps only, as ``--steady``), and the four
blocks of a round run back to back, in an order rotated every round, so the differences are paired within tens of
milliseconds. A round in which any run crossed an epoch boundary (the epoch's end and start hooks, a new loader
iterator) is left out. The CPU column is each thread's own CPU time.

The four runs are :mod:`throughput`'s (same models, same batches, same ``report``): ``bare - loop`` is
Lightning's own cost, ``step - bare`` our step's, ``ours - bare`` our step's and our datamodule's. Floor:
``ours - bare <= 100 us`` per step.

Where a run's tensors and objects happen to lie in memory (which thread got which allocator arena, what was
allocated before) moves its step time by up to about 100 us at batch 512, and that placement is fixed for the life
of a process: a narrow interval from one process says little about the next. ``--launches N`` runs the whole
measurement in N fresh processes one after the other, each with its own seed and its own (shuffled) order of
starting the threads, and reports each launch's median overheads and the median over launches with its interval,
so that the placement is sampled like any other noise:

    LIGHTNING_AE_DATA=path/to/data OMP_NUM_THREADS=1 python benchmarks/step_overhead.py --batch-size 512 \
        --rounds 200 --block-steps 10 --launches 10 --json step_overhead_launches_b512.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything

sys.path.insert(0, str(Path(__file__).parent))
from throughput import MODELS, OVERHEADS, RUNS, BareModule, LoopBatches, batches, median_ci, overhead_key, report

from lightning_ae import AutoencoderBase, MNISTDataModule


class Baton:
    """Turns among named threads: one runs at a time, in rounds whose order rotates by one name each round.

    ``wait(name)`` blocks until it is ``name``'s turn (True) or the rounds are over (False); ``pass_on()`` ends the
    current turn.
    """

    def __init__(self, names: list[str], rounds: int) -> None:
        self.names, self.rounds = names, rounds
        self.round, self.position = 0, 0
        self.condition = threading.Condition()

    @property
    def done(self) -> bool:
        return self.round >= self.rounds

    def current(self) -> str:
        shift = self.round % len(self.names)
        return (self.names[shift:] + self.names[:shift])[self.position]

    def wait(self, name: str) -> bool:
        with self.condition:
            self.condition.wait_for(lambda: self.done or self.current() == name)
            return not self.done

    def stop(self) -> None:
        """Ends every turn (a run failed): the other runs stop at their next step."""
        with self.condition:
            self.round = self.rounds
            self.condition.notify_all()

    def pass_on(self) -> None:
        with self.condition:
            self.position += 1
            if self.position == len(self.names):
                self.round, self.position = self.round + 1, 0
            self.condition.notify_all()


def minor_faults() -> int:
    """The calling thread's minor page faults so far (memory the allocator gave back to the kernel and takes again)."""
    return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt


class Blocks:
    """One run's timed blocks: ``times[round] = (wall s, thread CPU s, the thread's minor page faults)``, or None for a
    round whose block crossed an epoch boundary. ``step_done()`` is called at the end of every training step; it
    returns False when the rounds are over (the run should stop)."""

    def __init__(self, name: str, baton: Baton, ready: threading.Barrier, block_steps: int) -> None:
        self.name, self.baton, self.ready, self.block_steps = name, baton, ready, block_steps
        self.times: dict[int, tuple[float, float, int] | None] = {}
        self.started = False
        self.count, self.crossed, self.start = 0, False, (0.0, 0.0, 0)

    def _begin(self) -> bool:
        if not self.baton.wait(self.name):
            return False
        self.count, self.crossed = 0, False
        self.start = (time.perf_counter(), time.thread_time(), minor_faults())
        return True

    def epoch_started(self) -> None:
        self.crossed = True

    def step_done(self) -> bool:
        if not self.started:  # the first step is warm-up: wait until every run has made one, then take turns
            self.started = True
            self.ready.wait()
            return self._begin()
        self.count += 1
        if self.count < self.block_steps:
            return True
        end = (time.perf_counter(), time.thread_time(), minor_faults())
        spent = tuple(b - a for a, b in zip(self.start, end, strict=True))
        self.times[self.baton.round] = None if self.crossed else spent
        self.baton.pass_on()
        return self._begin()


class BlockCallback(Callback):
    """Drives :class:`Blocks` from a Trainer: each batch end is a step, each epoch after the first a crossing."""

    def __init__(self, blocks: Blocks) -> None:
        self.blocks, self.epochs = blocks, 0

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.epochs += 1
        if self.epochs > 1:
            self.blocks.epoch_started()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.blocks.step_done():
            trainer.should_stop = True


def fit(module: LightningModule, blocks: Blocks, **data: object) -> None:
    """``Trainer.fit`` of ``module`` (on ``train_dataloaders=`` or ``datamodule=``) until the rounds are over."""
    trainer = Trainer(max_epochs=-1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                      num_sanity_val_steps=0, callbacks=[BlockCallback(blocks)])
    trainer.fit(module, **data)


def loop(images: torch.Tensor, model: AutoencoderBase, args: argparse.Namespace, blocks: Blocks) -> None:
    """The hand-written loop of ``throughput.loop_epoch``, epoch after epoch, until the rounds are over."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    encoder, decoder = model.encoder, model.decoder
    model.train()
    for epoch in range(sys.maxsize):
        if epoch:
            blocks.epoch_started()
        for x in batches(images, args.batch_size, sys.maxsize, torch.device("cpu"), args.loop_gather):
            loss = F.binary_cross_entropy_with_logits(decoder(encoder(x)), x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if not blocks.step_done():
                return


def replica_mean(times: list[tuple[float, float, int] | None]) -> tuple[float, float, float] | None:
    """The mean (wall, CPU, faults) of one round's blocks of a run over its replicas that did not cross an epoch
    boundary; None if all did."""
    kept = [t for t in times if t is not None]
    return tuple(sum(column) / len(kept) for column in zip(*kept, strict=True)) if kept else None


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=400, help="rounds of one block per run")
    parser.add_argument("--block-steps", type=int, default=20, help="training steps per block")
    parser.add_argument("--replicas", type=int, default=1,
                        help="independent copies of each run (own model, optimizer, Trainer, thread), averaged per "
                             "round: where a run's tensors happen to lie in memory moves its step time by up to "
                             "about 100 us at batch 512, the same for two identical copies")
    parser.add_argument("--data-dir", default=os.environ.get("LIGHTNING_AE_DATA"))
    parser.add_argument("--model", choices=["ae", "tiny"], default="tiny")
    parser.add_argument("--loop-gather", choices=["index", "index_select"], default="index_select",
                        help="how the loop (and the bare module) gathers a batch (throughput.py --loop-gather)")
    parser.add_argument("--launches", type=int, default=1,
                        help="run the measurement in this many fresh processes, one after the other (each its own "
                             "seed and order of starting the threads), and report the median over them")
    parser.add_argument("--launch", type=int, default=None, help=argparse.SUPPRESS)  # set for each of --launches
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    if not args.data_dir:
        parser.error("set LIGHTNING_AE_DATA or --data-dir to the folder holding MNIST/raw")
    if args.rounds < 2 or args.block_steps < 1 or args.replicas < 1 or args.launches < 1:
        parser.error("--rounds must be >= 2, --block-steps, --replicas and --launches >= 1")
    # report() reads these throughput.py options
    args.steps, args.repeats, args.steady, args.accelerator, args.precision = args.block_steps, args.rounds, True, \
        "cpu", "32-true"
    args.compile, args.on_device = False, False
    return args


def combine_launches(launches: list[dict]) -> dict:
    """The median over launches of each launch's median overheads (us per step, wall clock) and its 90% bootstrap
    interval over launches, with every launch's own figures: the placement of a process's memory, fixed within a
    launch, is then one more source of noise that the interval covers."""
    result: dict = {"launches": len(launches), "per_launch": {
        "step_us": [run["step_us_wall_clock"] for run in launches],
        "minor_faults_per_step": [run.get("minor_faults_per_step") for run in launches]}}
    for _, num, den in OVERHEADS:
        key = overhead_key(num, den)
        result["per_launch"][f"{num} - {den}"] = values = [run[key] for run in launches]
        result[key] = statistics.median(values)
        result[key + "_ci90"] = median_ci(values)
        result[key + "_range"] = [min(values), max(values)]
    return result


def run_launches(args: argparse.Namespace, argv: list[str]) -> None:
    """Runs this script ``args.launches`` times in fresh processes, one after the other, and prints and writes
    :func:`combine_launches` of their results."""
    launches = []
    with tempfile.TemporaryDirectory() as folder:
        for i in range(args.launches):
            out = Path(folder) / f"launch{i}.json"
            done = subprocess.run([sys.executable, __file__, *launch_argv(argv, i, out)], capture_output=True,
                                  text=True)
            if done.returncode:
                sys.exit(f"launch {i} failed (exit status {done.returncode}):\n{done.stderr[-3000:]}")
            launches.append(json.loads(out.read_text()))
            ours = launches[-1][overhead_key("ours", "bare")]
            print(f"launch {i + 1}/{args.launches}: ours - bare {ours:,.0f} us per step", flush=True)
    result = combine_launches(launches)
    result["args"] = {k: v for k, v in vars(args).items() if k not in ("data_dir", "json", "launch")}
    print(f"batch {args.batch_size}, {args.launches} launches of {args.rounds} rounds of {args.block_steps} steps; "
          "us per step, wall clock; median over launches (90% interval), then each launch's median:")
    for _, num, den in OVERHEADS:
        key = overhead_key(num, den)
        low, high = result[key + "_ci90"]
        print(f"overhead {num} - {den}: {result[key]:,.0f} ({low:,.0f} .. {high:,.0f}); launches "
              + ", ".join(f"{v:,.0f}" for v in result["per_launch"][f"{num} - {den}"]))
    print("floor: ours - bare <= 100 us per step")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


def launch_argv(argv: list[str], launch: int, out: Path) -> list[str]:
    """The command line of launch ``launch``: the user's options, then the ones that make it one launch writing to
    ``out`` (argparse keeps the last value of an option given twice)."""
    return [*argv, "--launches", "1", "--launch", str(launch), "--json", str(out)]


def main() -> None:
    args = parse_args()
    if args.launches > 1:
        run_launches(args, sys.argv[1:])
        return
    measure(args)


def measure(args: argparse.Namespace) -> None:
    """One launch: the four runs in their threads, taking turns; prints and writes :func:`report`'s figures."""
    seed_everything(args.launch or 0, verbose=False)
    data = MNISTDataModule(data_dir=args.data_dir, download=False, batch_size=args.batch_size)
    data.setup("fit")
    images = data.train_set.images
    names = [f"{run}.{i}" for i in range(args.replicas) for run in RUNS]
    baton, ready = Baton(names, args.rounds), threading.Barrier(len(names))
    blocks = {name: Blocks(name, baton, ready, args.block_steps) for name in names}
    epochs = argparse.Namespace(**{**vars(args), "steps": sys.maxsize})  # LoopBatches: whole epochs, not blocks

    def train(name: str) -> None:  # every replica its own model, optimizer and Trainer
        run, model = name.split(".")[0], MODELS[args.model]()
        if run == "loop":
            loop(images, model, args, blocks[name])
        elif run == "ours":
            fit(model, blocks[name], datamodule=data)
        else:
            module = BareModule(model, args) if run == "bare" else model
            fit(module, blocks[name], train_dataloaders=LoopBatches(images, epochs, torch.device("cpu")))

    errors: list[BaseException] = []

    def run(name: str) -> None:
        try:
            train(name)
        except BaseException as error:  # stop the others, then raise it in the main thread
            errors.append(error)
            ready.abort()
            baton.stop()

    order = list(names)  # the order of starting the threads decides which allocator arena each gets
    if args.launch is not None:
        random.Random(args.launch).shuffle(order)
    threads = [threading.Thread(target=run, args=(name,), name=name) for name in order]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    per_round = {run: [replica_mean([blocks[f"{run}.{i}"].times.get(r) for i in range(args.replicas)])
                       for r in range(args.rounds)] for run in RUNS}
    kept = [r for r in range(args.rounds) if all(per_round[run][r] for run in RUNS)]
    images_per_block = args.block_steps * args.batch_size
    runs = {run: [(images_per_block / per_round[run][r][0], images_per_block / per_round[run][r][1]) for r in kept]
            for run in RUNS}
    print(f"interleaved blocks of {args.block_steps} steps, {args.replicas} replica(s) of each run: {len(kept)} of "
          f"{args.rounds} rounds kept (the others crossed an epoch boundary in every replica of a run); the CPU "
          "column is each thread's own CPU time")
    result = report(args, images.shape[0], runs)
    result["rounds_kept"] = len(kept)
    result["minor_faults_per_step"] = faults = {
        run: statistics.median(per_round[run][r][2] / args.block_steps for r in kept) for run in RUNS}
    print("minor page faults per step (median over rounds): " + ", ".join(f"{k} {v:,.1f}" for k, v in faults.items()))
    if args.replicas > 1:  # identical copies of one run: how far apart they come out is the floor of what can be told
        result["replica_step_us"] = copies = {run: [
            statistics.median(t[0] / args.block_steps * 1e6 for t in blocks[f"{run}.{i}"].times.values() if t)
            for i in range(args.replicas)] for run in RUNS}
        print("identical copies, median us per step: " + "; ".join(
            f"{run} {', '.join(f'{v:,.0f}' for v in values)} (spread {max(values) - min(values):,.0f})"
            for run, values in copies.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
