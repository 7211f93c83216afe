"""One command for the results table of the benchmarks page: trains every variant with its config, scores it, runs
the throughput benchmarks, and rewrites the table between the ``RESULTS-TABLE`` markers of ``docs/benchmarks.md``.

Per variant and dataset (``configs/<dataset>/<variant>.yaml``, trained by ``lightning-ae fit`` as a subprocess,
the command in the row): test MSE, PSNR and SSIM (torchmetrics), linear-probe accuracy
(:func:`lightning_ae.linear_probe`), the VAE's importance-weighted test NLL, the VQ-VAE's test codebook perplexity
and fraction of codes used. Then ``benchmarks/throughput.py`` (Autoencoder, ratio to a hand-written loop) and
``benchmarks/vae_throughput.py`` (VAE, ratios to the loop and to pythae when installed), each as a subprocess,
their own output parsed. The table names the machine, torch and the date once, and each row its wall-clock minutes
and its command as a user types it (``WORK`` for the work folder). Logs go to ``--work``.

    LIGHTNING_AE_DATA=path/to/data LIGHTNING_AE_CIFAR10=path/to/cifar python benchmarks/run_all.py
    python benchmarks/run_all.py --quick --page PAGE.md   # fewer steps, MNIST only (under 15 minutes on 2 CPU cores)
    python benchmarks/run_all.py --smoke --data-dir TINY --page PAGE.md   # seconds: the tests' smoke run

``--quick`` and ``--smoke`` figures are not the configs' and stay out of the docs: they need ``--page``.

The full run trains each config for its own epochs (hours on a 2-core CPU for CIFAR-10), so it can be spread over
several sittings: every finished row is kept as ``row.json`` in its folder of ``--work``, and a later run with the
same ``--work`` and mode reuses it (pass a new ``--work`` to train again). ``--datasets`` runs some datasets only;
the table holds every finished row of the work folder and names the ones still missing.

    python benchmarks/run_all.py --work runs --datasets mnist     # one sitting: the MNIST rows
    python benchmarks/run_all.py --work runs --datasets cifar10   # a later one: CIFAR-10 added to the table
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Trainer
from torchmetrics.image import StructuralSimilarityIndexMeasure

from lightning_ae import linear_probe
from lightning_ae.cli import build_cli
from lightning_ae.pretrained import load_pretrained

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("ae", "dae", "sae", "cae", "vae", "vqvae")
MODE_FLAG = ""  # "quick" or "smoke" when the table is not from the configs' own runs
START, END = "<!-- RESULTS-TABLE:START -->", "<!-- RESULTS-TABLE:END -->"
# fit steps per variant, throughput steps/repeats, datasets, IW samples of the VAE NLL per dataset (a dataset not
# named keeps its config's ``iw_samples``: CIFAR-10's conv VAE at K=1000 would decode 10 million images)
MODES = {
    "full": {"steps": None, "tp_steps": 100, "tp_repeats": 9, "datasets": ("mnist", "cifar10"),
             "iw": {"mnist": 1000}},
    "quick": {"steps": 300, "tp_steps": 50, "tp_repeats": 3, "datasets": ("mnist",), "iw": {"mnist": 100}},
    "smoke": {"steps": 2, "tp_steps": 20, "tp_repeats": 1, "datasets": ("mnist",), "iw": {"mnist": 2},
              "data": ["--data.val_size", "16", "--data.batch_size", "16"]},
}


def machine() -> str:
    """The machine in words: CPU or GPU, cores, torch."""
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else (platform.processor() or "CPU")
    return f"{device}, {os.cpu_count()} cores, torch {torch.__version__}"


def run(command: list[str], log: Path, cwd: Path = ROOT) -> str:
    """Runs ``command`` in ``cwd`` (default the repository root), its output to ``log``; returns stdout (raises on
    failure)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env)
    log.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed ({result.returncode}); see {log}")
    return result.stdout


def as_typed(command: list[str], args: argparse.Namespace) -> str:
    """``command`` as a user types it in the repository: ``python``, paths relative to the repository, the data
    folders as given on the command line (the subprocesses get them resolved)."""
    text = "python " + shlex.join(command[1:])
    for given, name in ((args.data_dir, "$LIGHTNING_AE_DATA"), (args.cifar_dir, "$LIGHTNING_AE_CIFAR10")):
        if given:  # before the repository's own path: a data folder inside the repository is still named
            text = text.replace(str(Path(given).resolve()), name).replace(str(given), name)
    return text.replace(str(args.work_dir), "WORK").replace(str(ROOT) + os.sep, "")


def data_args(dataset: str, args: argparse.Namespace) -> list[str]:
    folder = args.data_dir if dataset == "mnist" else args.cifar_dir
    return ["--data.data_dir", str(Path(folder).resolve()), "--data.download", "false",
            *MODES[args.mode].get("data", [])]


def fit_command(dataset: str, variant: str, steps: int | None, work: Path, args: argparse.Namespace) -> list[str]:
    """The ``lightning-ae fit`` of one variant: its config, for ``steps`` steps (``None``: the config's own epochs
    or steps), a model folder in ``work`` (run from ``work``, so the config's ``checkpoints/`` land there, apart
    from every other run)."""
    length = [] if steps is None else ["--trainer.max_steps", str(steps), "--trainer.max_epochs", "-1"]
    return [sys.executable, "-m", "lightning_ae", "fit", "--config", str(ROOT / f"configs/{dataset}/{variant}.yaml"),
            *data_args(dataset, args), *length, "--trainer.enable_progress_bar", "false", "--trainer.logger", "false",
            "--trainer.default_root_dir", str(work), "--save_pretrained", str(work / "model")]


def ssim(model: Any, datamodule: Any) -> float:
    """SSIM of the test reconstructions (torchmetrics), images clamped to the pixel range."""
    low, high = model.pixel_range
    metric = StructuralSimilarityIndexMeasure(data_range=(low, high))
    with torch.no_grad():
        for batch in datamodule.test_dataloader():
            x, _ = datamodule.on_after_batch_transfer(batch, 0)
            metric.update(model(x).clamp(low, high), x)
    return float(metric.compute())


def score(dataset: str, variant: str, work: Path, iw: int | None, args: argparse.Namespace) -> dict[str, float]:
    """Test metrics of the model folder in ``work``, on the datamodule of its config (``iw``: importance samples of
    the VAE's NLL; ``None`` keeps the config's)."""
    cli = build_cli(["--config", f"configs/{dataset}/{variant}.yaml", *data_args(dataset, args)], run=False)
    datamodule = cli.datamodule
    model = load_pretrained(work / "model")
    if iw is not None and hasattr(model, "iw_samples"):
        model.iw_samples = iw
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    metrics = {k: float(v) for k, v in trainer.test(model, datamodule=datamodule, verbose=False)[0].items()}
    metrics["test/ssim"] = ssim(model.eval(), datamodule)
    metrics["probe"] = linear_probe(model, datamodule, max_train_samples=10_000)
    return metrics


def throughput_rows(mode: dict[str, Any], work: Path, args: argparse.Namespace) -> list[dict[str, str]]:
    """Rows of ``throughput.py`` and ``vae_throughput.py`` (their output parsed), ratio to the loop and peers."""
    steps, repeats = str(mode["tp_steps"]), str(mode["tp_repeats"])
    command = [sys.executable, "benchmarks/throughput.py", "--steps", steps, "--repeats", repeats,
               "--data-dir", str(args.data_dir)]
    out = run(command, work / "throughput.log")
    ratio = re.search(r"ratio ours/loop \(wall clock\): ([\d.]+)", out)
    rows = [{"variant": "Autoencoder (MLP, BCE)", "dataset": "MNIST",
             "throughput": f"{float(ratio.group(1)):.2f}x loop" if ratio else "n/a",
             "command": as_typed(command, args)}]
    if args.skip_vae_throughput:
        return rows
    command = [sys.executable, "-m", "benchmarks.vae_throughput", "--reps", repeats, "--epochs", "1"]
    try:
        import pythae  # noqa: F401
    except ImportError:
        command.append("--no-pythae")
    out = run(command, work / "vae_throughput.log")
    result = json.loads(out[out.index("{"):])
    ratios = result.get("ratio_to_loop_wall", next(v for k, v in result.items() if k.startswith("ratio_to_loop")))
    text = ", ".join(f"{v:.2f}x {k}" for k, v in ratios.items() if k != "ours")
    rows.append({"variant": "VAE (MLP)", "dataset": "MNIST", "throughput": f"ours = {text}" if text else "n/a",
                 "command": as_typed(command, args)})
    return rows


def fmt(metrics: dict[str, float], key: str, spec: str) -> str:
    return format(metrics[key], spec) if key in metrics else ""


def table(rows: list[dict[str, str]], where: str, missing: list[str]) -> str:
    """The markdown table of all rows, with the machine, the dates the rows ran on and how it was made; ``missing``
    names the rows not run yet."""
    head = ["variant", "dataset", "test MSE", "PSNR", "SSIM", "probe acc.", "VAE NLL", "VQ perplexity",
            "VQ codes used", "train images/s", "minutes", "command"]
    dates = sorted({row.get("date", time.strftime("%Y-%m-%d")) for row in rows})
    when = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"
    lines = [f"Machine: {where}; {when}. Written by `python benchmarks/run_all.py"
             f"{' --' + MODE_FLAG if MODE_FLAG else ''}`.", "",
             "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    keys = ["variant", "dataset", "mse", "psnr", "ssim", "probe", "nll", "perplexity", "used", "throughput", "minutes"]
    for row in rows:
        lines.append("| " + " | ".join(row.get(k, "") for k in keys) + f" | `{row['command']}` |")
    lines += ["", "VAE NLL: importance-weighted test NLL in nats per image (MNIST: K = 1000 samples, Bernoulli pixels; "
              "CIFAR-10: the config's K = 100, a density over pixels in [0, 1], which can be negative, with the "
              "bits per dimension of the discretized pixels beside it). Probe: linear-probe accuracy on the latent "
              "codes (10,000 training images). Minutes: training and scoring, alone on the machine."]
    if missing:
        lines += ["", f"Not run yet: {', '.join(missing)}."]
    return "\n".join(lines)


def variant_row(dataset: str, variant: str, command: list[str], m: dict[str, float],
                args: argparse.Namespace) -> dict[str, str]:
    nll = fmt(m, "test/nll", ".2f")
    if nll and dataset != "mnist" and "test/bpd" in m:  # nats per image of 3,072 dimensions: bits/dim beside them
        nll += f" ({m['test/bpd']:.3f} bits/dim)"
    return {"variant": variant, "dataset": dataset, "mse": fmt(m, "test/mse", ".4f"),
            "psnr": fmt(m, "test/psnr", ".2f"), "ssim": fmt(m, "test/ssim", ".3f"), "probe": fmt(m, "probe", ".3f"),
            "nll": nll, "perplexity": fmt(m, "test/codebook_perplexity", ".1f"),
            "used": fmt(m, "test/codebook_used_fraction", ".2f"), "command": as_typed(command, args)}


def write_table(readme: Path, text: str) -> None:
    """Replaces what lies between the markers of ``readme`` with ``text`` (temporary file, then rename)."""
    content = readme.read_text()
    if START not in content or END not in content:
        raise SystemExit(f"{readme} lacks the markers {START} and {END}")
    before, rest = content.split(START, 1)
    after = rest.split(END, 1)[1]
    tmp = readme.with_name(f".{readme.name}.tmp")
    tmp.write_text(f"{before}{START}\n{text}\n{END}{after}")
    os.replace(tmp, readme)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="fewer steps, MNIST only")
    group.add_argument("--smoke", action="store_true", help="2 steps: checks that everything runs (tests)")
    parser.add_argument("--data-dir", default=os.environ.get("LIGHTNING_AE_DATA"), help="folder with MNIST/raw")
    parser.add_argument("--cifar-dir", default=os.environ.get("LIGHTNING_AE_CIFAR10"))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--page", "--readme", dest="page", type=Path, default=None,
                        help="the page whose RESULTS-TABLE markers get the table (default docs/benchmarks.md; "
                             "required with --quick and --smoke)")
    parser.add_argument("--work", type=Path, default=None, help="runs and logs (default: a temporary folder)")
    parser.add_argument("--datasets", nargs="+", default=None, choices=("mnist", "cifar10"),
                        help="train these datasets' rows now (default: the mode's datasets)")
    parser.add_argument("--skip-vae-throughput", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true",
                        help="reuse the throughput rows of a former run in --work (run them when there are none)")
    args = parser.parse_args()
    if not args.data_dir:
        parser.error("set LIGHTNING_AE_DATA or --data-dir to the folder holding MNIST/raw")
    os.environ["LIGHTNING_AE_DATA"] = str(args.data_dir)  # what vae_throughput.py reads
    args.mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    if args.page is None:
        if args.mode != "full":
            parser.error(f"--{args.mode} figures are not the configs' and stay out of the docs: pass --page FILE")
        args.page = ROOT / "docs" / "benchmarks.md"
    global MODE_FLAG
    MODE_FLAG = "" if args.mode == "full" else args.mode
    mode = MODES[args.mode]
    datasets = [d for d in args.datasets or mode["datasets"] if d in mode["datasets"]]
    if "cifar10" in datasets and not args.cifar_dir:
        if args.datasets:
            parser.error("set LIGHTNING_AE_CIFAR10 or --cifar-dir to the folder holding cifar-10-batches-py")
        datasets.remove("cifar10")
    work = args.work or Path(tempfile.mkdtemp(prefix="run_all-"))
    work = args.work_dir = work.resolve()
    rows, missing = [], []
    for dataset in mode["datasets"]:
        for variant in args.variants:
            folder = work / dataset / variant
            if (row := kept_row(dataset, variant, folder, args.mode)) is not None:
                rows.append(row)
            elif dataset in datasets:
                rows.append(variant_result(dataset, variant, folder, mode, args))
            else:
                missing.append(f"{variant} on {dataset}")
    saved = kept(work / "throughput.json", args.mode, None)
    if saved is None or not args.skip_throughput:
        rows_now = [row | {"date": time.strftime("%Y-%m-%d")} for row in throughput_rows(mode, work, args)]
        saved = {"mode": args.mode, "config": None, "rows": rows_now}
        write_json(work / "throughput.json", saved)
    rows += saved["rows"]
    write_table(args.page, table(rows, machine(), missing))
    print(f"results table written to {args.page}; runs in {work}")


def write_json(path: Path, value: Any) -> None:
    """``value`` as JSON at ``path`` (temporary file, then rename: a killed run leaves no half row)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(tmp, path)


def config_digest(dataset: str, variant: str) -> str:
    """SHA-256 of the variant's config: a row kept from an older config is not reused."""
    return hashlib.sha256((ROOT / f"configs/{dataset}/{variant}.yaml").read_bytes()).hexdigest()


def kept(path: Path, mode: str, config: str | None) -> dict[str, Any] | None:
    """What a former run of ``mode`` (and of the config whose digest is ``config``) kept at ``path``; ``None`` if
    nothing, or something from another mode or config."""
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    return saved if saved.get("mode") == mode and saved.get("config") == config else None


def kept_row(dataset: str, variant: str, folder: Path, mode: str) -> dict[str, str] | None:
    """The row of one variant kept in ``folder`` by a former run of ``mode`` with the same config."""
    saved = kept(folder / "row.json", mode, config_digest(dataset, variant))
    if saved is not None:
        print(f"reusing {folder / 'row.json'}", flush=True)
    return None if saved is None else saved["row"]


def variant_result(dataset: str, variant: str, folder: Path, mode: dict[str, Any],
                   args: argparse.Namespace) -> dict[str, str]:
    """The row of one variant trained and scored now in ``folder`` (kept there as ``row.json``)."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in ("model", "checkpoints"):  # an unfinished run's leftovers: train from the start
        shutil.rmtree(folder / old, ignore_errors=True)
    command = fit_command(dataset, variant, mode["steps"], folder, args)
    start = time.perf_counter()
    run(command, folder / "fit.log", cwd=folder)
    scores = score(dataset, variant, folder, mode["iw"].get(dataset), args)
    row = variant_row(dataset, variant, command, scores, args)
    row |= {"minutes": f"{(time.perf_counter() - start) / 60:.1f}", "date": time.strftime("%Y-%m-%d")}
    write_json(folder / "row.json", {"mode": args.mode, "config": config_digest(dataset, variant), "row": row})
    print(json.dumps(row), flush=True)
    return row


if __name__ == "__main__":
    main()
