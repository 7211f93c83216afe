r"""Per-step work counted, not timed: the instructions and simulated cache misses of a training step of a bare
LightningModule, our step and ours with its datamodule, under valgrind's cachegrind.

    LIGHTNING_AE_DATA=path/to/data python benchmarks/step_instructions.py --batch-size 512 --steps 10 210

Each run is one ``Trainer.fit`` of ``throughput.py``'s tiny model (``bare`` and ``step`` on the loop's batches,
``ours`` with ``MNISTDataModule``) under ``valgrind --tool=cachegrind``; a run of the larger step count minus one
of the smaller, divided by the steps between them, is the cost of one steady step (start-up, imports and the
first steps cancel). Objects alive before ``fit`` are frozen out of the garbage collector (``gc.freeze()``), so a
full collection, a rare event that walks every object of torch and Lightning, does not land in one run of a pair
and not the other; the collections each run made are printed. A count does not drift with the machine's load,
so differences of a few thousand instructions per step show; what it leaves out is what a simulation cannot see:
page faults, the real caches' placement effects, the kernel. Under valgrind a run takes minutes (``--jobs`` runs
that many at once).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
VARIANTS = ("bare", "step", "ours")


def child(variant: str, batch_size: int, steps: int, data_dir: str) -> None:
    """One ``Trainer.fit`` of ``steps`` steps of ``variant`` (what runs under valgrind)."""
    from lightning.pytorch import Trainer
    from throughput import MODELS, BareModule, LoopBatches

    from lightning_ae import MNISTDataModule

    torch.set_num_threads(1)
    torch.manual_seed(0)
    args = argparse.Namespace(batch_size=batch_size, steps=steps, model="tiny", loop_gather="index_select")
    data = MNISTDataModule(data_dir=data_dir, download=False, batch_size=batch_size)
    data.setup("fit")
    module = BareModule(MODELS["tiny"](), args) if variant == "bare" else MODELS["tiny"]()
    trainer = Trainer(max_epochs=1, limit_train_batches=steps, accelerator="cpu", devices=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      limit_val_batches=0, num_sanity_val_steps=0)
    gc.collect()
    gc.freeze()
    before = [generation["collections"] for generation in gc.get_stats()]
    if variant == "ours":
        trainer.fit(module, datamodule=data)
    else:
        trainer.fit(module, train_dataloaders=LoopBatches(data.train_set.images, args, torch.device("cpu")))
    if trainer.global_step != steps:
        raise SystemExit(f"{variant}: ran {trainer.global_step} steps, not {steps}")
    print(json.dumps({"gc_collections": [g["collections"] - b for g, b in zip(gc.get_stats(), before, strict=True)]}))


def epoch_steps(data_dir: str, batch_size: int) -> int:
    """Full batches in one epoch of the MNIST training split (the loop's batches; ours has as many or one more)."""
    from lightning_ae import MNISTDataModule

    data = MNISTDataModule(data_dir=data_dir, download=False, batch_size=batch_size)
    data.setup("fit")
    return len(data.train_set) // batch_size


def counted(variant: str, steps: int, args: argparse.Namespace, folder: str) -> tuple[dict[str, int], list[int]]:
    """cachegrind's totals (``Ir``, ``D1mr``...) of one run of ``variant`` for ``steps`` steps, and the garbage
    collections per generation it made during ``fit``."""
    out = os.path.join(folder, f"{variant}_{steps}.out")
    command = ["valgrind", "--tool=cachegrind", "--cache-sim=yes", f"--cachegrind-out-file={out}", sys.executable,
               __file__, "--child", variant, "--batch-size", str(args.batch_size), "--steps", str(steps)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        messages = [line for line in done.stderr.splitlines() if line and not line.startswith(("==", "--"))]
        raise SystemExit(f"valgrind run of {variant} ({steps} steps) failed: {(messages or ['(no message)'])[-1]}")
    lines = Path(out).read_text().splitlines()
    events = next(line for line in lines if line.startswith("events:")).split()[1:]
    summary = next(line for line in lines if line.startswith("summary:")).split()[1:]
    collections = json.loads(done.stdout.strip().splitlines()[-1])["gc_collections"]
    return dict(zip(events, map(int, summary), strict=True)), collections


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 210],
                        help="two step counts (the child mode takes one)")
    parser.add_argument("--jobs", type=int, default=2, help="valgrind runs at once")
    parser.add_argument("--data-dir", default=os.environ.get("LIGHTNING_AE_DATA"))
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.data_dir:
        parser.error("set LIGHTNING_AE_DATA or --data-dir to the folder holding MNIST/raw")
    if args.child:
        child(args.child, args.batch_size, args.steps[0], args.data_dir)
        return
    if len(args.steps) != 2 or not 0 < args.steps[0] < args.steps[1]:
        parser.error("--steps takes two counts, the smaller first")
    if args.steps[1] > (per_epoch := epoch_steps(args.data_dir, args.batch_size)):  # both runs inside one epoch
        parser.error(f"--steps {args.steps[1]} is more than one epoch at batch {args.batch_size} ({per_epoch} steps)")
    if shutil.which("valgrind") is None:
        parser.error("valgrind is not installed (it counts the instructions)")
    os.environ["LIGHTNING_AE_DATA"] = args.data_dir
    runs = [(variant, steps) for variant in VARIANTS for steps in args.steps]
    with tempfile.TemporaryDirectory() as folder, ThreadPoolExecutor(args.jobs) as pool:
        results = dict(zip(runs, pool.map(lambda run: counted(*run, args, folder), runs), strict=True))
    totals = {run: result[0] for run, result in results.items()}
    between = args.steps[1] - args.steps[0]
    per_step = {variant: {event: (totals[(variant, args.steps[1])][event] - totals[(variant, args.steps[0])][event])
                          / between for event in totals[(variant, args.steps[0])]} for variant in VARIANTS}
    events = list(per_step["bare"])
    print(f"tiny model, batch {args.batch_size}, steps {args.steps[0]} and {args.steps[1]}; per steady step "
          f"(cachegrind: Ir instructions, D1mr/DLmr first-level/last-level data read misses...)")
    print("| run | " + " | ".join(events) + " |")
    print("| --- |" + " --- |" * len(events))
    for variant in VARIANTS:
        print(f"| {variant} | " + " | ".join(f"{per_step[variant][e]:,.0f}" for e in events) + " |")
    print("garbage collections during fit (generations 0/1/2): " + "; ".join(
        f"{variant} {steps} steps {'/'.join(map(str, results[(variant, steps)][1]))}" for variant, steps in runs))
    for variant in ("step", "ours"):
        print(f"| {variant} - bare | " + " | ".join(f"{per_step[variant][e] - per_step['bare'][e]:,.0f}"
                                                 for e in events) + " |")


if __name__ == "__main__":
    main()
