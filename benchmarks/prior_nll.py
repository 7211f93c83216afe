"""Priors over the codes of a VQ-VAE (MNIST or CIFAR-10): the transformer against the gated PixelCNN at the same
wall-clock budget (test NLL in bits per code, with the curve); on MNIST, class-conditional transformer samples
recognised by a classifier; on CIFAR-10, the FD-C10 of unconditional samples from both priors.

Stages, each its own process (run ``fit`` of the two priors side by side, one thread each, so the machine's noise
hits both alike; nothing else may run meanwhile):

    export LIGHTNING_AE_DATA=path/holding/MNIST                      # the MNIST IDX files
    python benchmarks/prior_nll.py codes                              # VQ-VAE of configs/mnist/vqvae.yaml, codes
    python benchmarks/prior_nll.py fit --prior pixelcnn --minutes 15 --threads 1 &
    python benchmarks/prior_nll.py fit --prior transformer --minutes 15 --threads 1; wait
    python benchmarks/prior_nll.py fit --prior transformer-cond --minutes 10 --threads 1 &
    python benchmarks/prior_nll.py classifier --threads 1; wait
    python benchmarks/prior_nll.py samples                            # 1,000 class-conditional samples, classified
    python benchmarks/prior_nll.py report                             # the table and docs/prior_nll_mnist.png
    python benchmarks/prior_nll.py fit --prior pixelcnn --seed 1 ... # further seeds: fit-<prior>-seed1.json,
                                                                      # their spread in the report

    export LIGHTNING_AE_CIFAR10=path/holding/cifar-10-batches-py      # CIFAR-10
    lightning-ae fit --config configs/cifar10/classifier.yaml --save_pretrained cifar10-classifier  # FD-C10's
    python benchmarks/prior_nll.py codes --dataset cifar10 --vq-steps 4000 --threads 2
    python benchmarks/prior_nll.py fit --dataset cifar10 --prior pixelcnn --minutes 15 --eval-every 180 &
    python benchmarks/prior_nll.py fit --dataset cifar10 --prior transformer --minutes 15 --eval-every 180; wait
    python benchmarks/prior_nll.py draw --dataset cifar10 --prior transformer --num-samples 1000 --threads 2
    python benchmarks/prior_nll.py draw --dataset cifar10 --prior pixelcnn --num-samples 1000 --threads 2
    python benchmarks/prior_nll.py fd --dataset cifar10 --classifier cifar10-classifier --threads 2
    python benchmarks/prior_nll.py report --dataset cifar10

``codes`` trains the VQ-VAE of ``configs/<dataset>/vqvae.yaml`` (its networks, quantizer, optimizer, batch size and
data, built by the library's CLI) for ``--vq-steps`` steps and stores it as a model folder with the code indices of
the training and test splits. ``fit`` trains one prior of the library as ``configs/<dataset>/vqvae_prior.yaml``
(``PixelCNNPrior``) or ``configs/<dataset>/transformer_prior.yaml`` (``TransformerPrior``; unconditional for the
NLL comparison, class-conditional for ``transformer-cond``) configure it, with the configs' optimizers, on the
cached training codes for ``--minutes`` of training time (evaluation excluded), evaluating the test NLL of all
10,000 test grids every ``--eval-every`` seconds. ``samples`` (MNIST) draws 100 samples per class from
``transformer-cond`` at several guidance scales and counts those a small CNN classifier (trained by ``classifier``,
its test accuracy reported) assigns to the requested class. ``draw`` stores ``--num-samples`` unconditional
samples of a prior, timed; ``fd`` (CIFAR-10) scores them with FD-C10 (``benchmarks/fd_c10.py``'s yardstick: the
penultimate features of ``configs/cifar10/classifier.yaml``'s classifier) against the 10,000 test images, beside
two references at the same number of images: the VQ-VAE's reconstructions of test images (what a perfect prior
could reach through this decoder) and training images (the yardstick's floor). A Fréchet distance from 1,000 images
is biased upwards: compare the rows with each other, not with figures from other sample sizes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lightning_ae import PixelCNNPrior, TransformerPrior
from lightning_ae.callbacks.grid import make_grid, normalize_images, to_rgb_uint8
from lightning_ae.cli import build_cli

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DATA_ENV = {"mnist": "LIGHTNING_AE_DATA", "cifar10": "LIGHTNING_AE_CIFAR10"}
PRIOR_CONFIG = {"pixelcnn": "vqvae_prior", "transformer": "transformer_prior", "transformer-cond": "transformer_prior"}


def batches(n: int, batch_size: int, gen: torch.Generator):
    while True:
        yield from torch.randperm(n, generator=gen).split(batch_size)


def from_config(dataset: str, name: str, *overrides: str) -> Any:
    """The CLI of ``configs/<dataset>/<name>.yaml`` built but not run (model, data and their links), the data
    read from the folder in the dataset's environment variable."""
    return build_cli(["--config", str(CONFIGS / dataset / f"{name}.yaml"), "--trainer.logger", "false", *overrides],
                     run=False)


def optimizer_of(model: Any) -> torch.optim.Optimizer:
    """The optimizer the model's config configures (its scheduler, if any, is not used in these fixed budgets)."""
    built = model.configure_optimizers()
    return built["optimizer"] if isinstance(built, dict) else built


def image_data(dataset: str) -> tuple[Any, Any]:
    """The VQ-VAE config's model (seeded by the config) and its datamodule, set up for fit and test."""
    cli = from_config(dataset, "vqvae", "--data.data_dir", os.environ[DATA_ENV[dataset]], "--data.download", "false")
    cli.datamodule.setup("fit")
    cli.datamodule.setup("test")
    return cli.model, cli.datamodule


def stage_codes(args: argparse.Namespace) -> None:
    model, dm = image_data(args.dataset)
    gen = torch.Generator().manual_seed(0)
    model.train()
    opt = optimizer_of(model)
    images, start = dm.train_set.images, time.perf_counter()
    for step, idx in enumerate(batches(images.shape[0], dm.batch_size, gen), start=1):
        terms = model.loss_terms(dm.transform(images[idx], training=True), "train").as_dict()
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        opt.step()
        if step % 100 == 0:
            print(f"vqvae step {step} recon {terms['recon'].item():.4f} perplexity {terms['perplexity'].item():.1f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
        if step >= args.vq_steps:
            break
    model.eval()
    args.work.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.work / "vqvae")
    with torch.no_grad():
        for split, data in (("train", dm.train_set), ("test", dm.test_set)):
            x, labels = data.__getitems__(list(range(len(data))))
            codes = torch.cat([model.encode_indices(dm.transform(c, training=False)) for c in x.split(1000)])
            np.save(args.work / f"{split}_codes.npy", codes.numpy().astype(np.int16))
            np.save(args.work / f"{split}_labels.npy", labels.numpy())
        x = dm.test_set.images
        se = sum(F.mse_loss(model(dm.transform(c, False)), dm.transform(c, False), reduction="sum").item()
                 for c in x.split(1000))
    meta = {"dataset": args.dataset, "vq_steps": args.vq_steps, "batch_size": dm.batch_size,
            "test_mse": se / x.numel(), "seconds": time.perf_counter() - start}
    (args.work / "vqvae.json").write_text(json.dumps(meta, indent=2))
    print(json.dumps(meta))


# ---- stage 2: a prior for a wall-clock budget --------------------------------------------------------------------
def build_prior(dataset: str, kind: str, folder: Path) -> tuple[PixelCNNPrior | TransformerPrior,
                                                                 torch.optim.Optimizer, int]:
    """The prior of ``configs/<dataset>/<vqvae_prior|transformer_prior>.yaml`` over the VQ-VAE folder, the config's
    optimizer over its trainable parameters, and the config's batch size."""
    images = "--data.init_args." if kind == "pixelcnn" else "--data.init_args.images.init_args."  # codes of images
    overrides = ["--model.init_args.vqvae_checkpoint", str(folder), f"{images}data_dir",
                 os.environ[DATA_ENV[dataset]], f"{images}download", "false"]
    if kind != "pixelcnn":
        overrides += ["--model.init_args.class_conditional", str(kind == "transformer-cond").lower()]
    cli = from_config(dataset, PRIOR_CONFIG[kind], *overrides)
    return cli.model, optimizer_of(cli.model), cli.datamodule.batch_size


@torch.no_grad()
def test_bits(prior: PixelCNNPrior | TransformerPrior, codes: torch.Tensor, labels: torch.Tensor) -> float:
    prior.eval()
    nats = sum(prior.nll(c, y).item() * c.numel() for c, y in zip(codes.split(1000), labels.split(1000),
                                                                    strict=True)) / codes.numel()
    prior.train()
    return nats / math.log(2)


def stage_fit(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    train = torch.from_numpy(np.load(args.work / "train_codes.npy")).long()
    train_y = torch.from_numpy(np.load(args.work / "train_labels.npy")).long()
    test = torch.from_numpy(np.load(args.work / "test_codes.npy")).long()
    test_y = torch.from_numpy(np.load(args.work / "test_labels.npy")).long()
    prior, opt, batch_size = build_prior(args.dataset, args.prior, args.work / "vqvae")
    prior.train()
    budget, trained, cpu, step, curve = args.minutes * 60, 0.0, 0.0, 0, []
    next_eval = 0.0
    for idx in batches(train.shape[0], batch_size, gen):
        if trained >= next_eval:
            curve.append({"seconds": trained, "cpu_seconds": cpu, "steps": step,
                          "test_bits_per_code": test_bits(prior, test, test_y)})
            print(json.dumps(curve[-1]), flush=True)
            next_eval += args.eval_every
        if trained >= budget:
            break
        t0, c0 = time.perf_counter(), time.process_time()
        loss = prior.nll(train[idx], prior.conditioning(train_y[idx]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        trained += time.perf_counter() - t0
        cpu += time.process_time() - c0
        step += 1
    result = {"prior": args.prior, "minutes": args.minutes, "threads": args.threads, "seed": args.seed,
              "steps": step, "parameters": sum(p.numel() for p in prior.network_parameters()),
              "test_bits_per_code": curve[-1]["test_bits_per_code"], "curve": curve}
    tag = args.prior if args.seed == 0 else f"{args.prior}-seed{args.seed}"  # seed 0 is what draw/samples read
    prior.save_pretrained(args.work / f"prior-{tag}")
    (args.work / f"fit-{tag}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "curve"}))


# ---- stage 3: the classifier and the conditional samples ----------------------------------------------------------
def small_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))


def stage_classifier(args: argparse.Namespace) -> None:
    dm, gen = image_data("mnist")[1], torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = small_cnn()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, y = dm.train_set.__getitems__(list(range(len(dm.train_set))))
    for step, idx in enumerate(batches(len(x), 128, gen), start=1):
        F.cross_entropy(net(dm.transform(x[idx], training=False)), y[idx]).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= args.classifier_steps:
            break
    net.eval()
    tx, ty = dm.test_set.__getitems__(list(range(len(dm.test_set))))
    with torch.no_grad():
        accuracy = (net(dm.transform(tx, training=False)).argmax(1) == ty).float().mean().item()
    torch.save(net.state_dict(), args.work / "classifier.pt")
    (args.work / "classifier.json").write_text(json.dumps({"steps": args.classifier_steps,
                                                           "test_accuracy": accuracy}))
    print(f"classifier test accuracy {accuracy:.4f}")


@torch.no_grad()
def stage_samples(args: argparse.Namespace) -> None:
    prior = TransformerPrior.from_pretrained(args.work / "prior-transformer-cond").eval()
    net = small_cnn()
    net.load_state_dict(torch.load(args.work / "classifier.pt", weights_only=True))
    net.eval()
    wanted = torch.arange(10).repeat_interleave(100)  # 1,000 samples, 100 per class
    rows = []
    for cfg in args.cfg_scales:
        gen = torch.Generator().manual_seed(0)
        start = time.perf_counter()
        images = torch.cat([prior.sample(len(y), gen, labels=y, cfg_scale=cfg) for y in wanted.split(250)])
        seconds = time.perf_counter() - start
        accuracy = (net(images.clamp(0, 1)).argmax(1) == wanted).float().mean().item()
        rows.append({"cfg_scale": cfg, "recognised": accuracy, "images_per_s": len(wanted) / seconds})
        print(json.dumps(rows[-1]), flush=True)
    (args.work / "samples.json").write_text(json.dumps(rows, indent=2))


# ---- CIFAR-10: unconditional samples and their FD-C10 --------------------------------------------------------------
@torch.no_grad()
def stage_draw(args: argparse.Namespace) -> None:
    prior = (PixelCNNPrior if args.prior == "pixelcnn" else TransformerPrior).from_pretrained(
        args.work / f"prior-{args.prior}").eval()
    gen, start, chunks = torch.Generator().manual_seed(args.seed), time.perf_counter(), []
    for n in torch.arange(args.num_samples).split(250):
        chunks.append(normalize_images(prior.sample(len(n), gen), prior.pixel_range))
        print(f"{args.prior}: {sum(len(c) for c in chunks)} samples ({time.perf_counter() - start:.0f} s)", flush=True)
    seconds = time.perf_counter() - start
    images = (torch.cat(chunks) * 255).round().to(torch.uint8)  # (N, C, H, W)
    np.save(args.work / f"samples-{args.prior}.npy", images.numpy())
    meta = {"prior": args.prior, "samples": len(images), "threads": args.threads, "images_per_s": len(images) / seconds}
    (args.work / f"draw-{args.prior}.json").write_text(json.dumps(meta, indent=2))
    print(json.dumps(meta))


@torch.no_grad()
def stage_fd(args: argparse.Namespace) -> None:
    from lightning_ae.callbacks.evaluation import build_yardstick
    from lightning_ae.metrics import FrechetDistance, frechet_distance

    model, dm = image_data("cifar10")
    vqvae = type(model).from_pretrained(args.work / "vqvae").eval()
    real = dm.test_set.images  # (10000, 3, 32, 32) uint8
    n = args.num_samples
    fakes = {"training images (floor)": dm.train_set.images[:n].float() / 255,
             "VQ-VAE reconstructions": torch.cat([normalize_images(vqvae(dm.transform(c, False)), vqvae.pixel_range)
                                                  for c in real[:n].split(500)])}
    for kind in ("pixelcnn", "transformer"):
        path = args.work / f"samples-{kind}.npy"
        if path.is_file():
            fakes[f"{kind} samples"] = torch.from_numpy(np.load(path)).float() / 255
    reference = build_yardstick("fd", feature_network=str(args.classifier), image_shape=(3, 32, 32))
    for chunk in real.split(500):  # the test images' features, once for every row
        reference.update_real(chunk.float() / 255)
    rows = []
    for name, images in fakes.items():
        metric = FrechetDistance(reference.features, reference.real_sum.numel())
        for chunk in images.split(500):
            metric.update_fake(chunk)
        fd = frechet_distance(*reference.statistics("real"), *metric.statistics("fake"))
        rows.append({"images": name, "count": len(images), "fd_c10": float(fd)})
        print(json.dumps(rows[-1]), flush=True)
    (args.work / "fd.json").write_text(json.dumps(rows, indent=2))


# ---- the report ----------------------------------------------------------------------------------------------------
def stage_report(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {"vqvae": json.loads((args.work / "vqvae.json").read_text())}
    fig, ax = plt.subplots(figsize=(6, 4))
    for kind in ("pixelcnn", "transformer", "transformer-cond"):
        path = args.work / f"fit-{kind}.json"
        if path.is_file():
            fit = json.loads(path.read_text())
            out[kind] = fit
            ax.plot([c["seconds"] / 60 for c in fit["curve"]], [c["test_bits_per_code"] for c in fit["curve"]],
                    label=f"{kind} ({fit['parameters'] / 1e6:.2f}M parameters)")
            seeds = [fit] + [json.loads(p.read_text()) for p in sorted(args.work.glob(f"fit-{kind}-seed*.json"))]
            if len(seeds) > 1:
                bits = [s["test_bits_per_code"] for s in seeds]
                out[f"{kind} over seeds"] = {"seeds": [s["seed"] for s in seeds],
                                             "minutes": [s["minutes"] for s in seeds], "test_bits_per_code": bits,
                                             "mean": float(np.mean(bits)), "min": min(bits), "max": max(bits)}
    for name in ("classifier", "samples", "draw-pixelcnn", "draw-transformer", "fd"):
        if (args.work / f"{name}.json").is_file():
            out[name] = json.loads((args.work / f"{name}.json").read_text())
    ax.set_xlabel("training minutes (one thread)")
    ax.set_ylabel("test NLL, bits per code")
    if args.dataset == "mnist":
        ax.set_ylim(top=4.5)
    ax.legend()
    ax.grid(alpha=0.3)
    args.png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png, dpi=100, bbox_inches="tight")
    if "fd" in out:
        sample_grid(args)
    summary = {k: ({kk: vv for kk, vv in v.items() if kk != "curve"} if isinstance(v, dict) else v)
               for k, v in out.items()}
    print(json.dumps(summary, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))


def sample_grid(args: argparse.Namespace) -> None:
    """``docs/prior_samples_cifar10.png``: the first 32 samples of each prior (4 rows of 8; PixelCNN above)."""
    from PIL import Image

    grids = [make_grid(torch.from_numpy(np.load(args.work / f"samples-{kind}.npy")[:32]).float() / 255, nrow=8)
             for kind in ("pixelcnn", "transformer")]  # (3, 4 * 34 + 2, 8 * 34 + 2) each
    gap = torch.ones(3, 8, grids[0].shape[2])
    image = Image.fromarray(to_rgb_uint8(torch.cat([grids[0], gap, grids[1]], dim=1)))
    image = image.resize((2 * image.width, 2 * image.height), Image.NEAREST)
    image.save(args.png.with_name("prior_samples_cifar10.png"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=["codes", "fit", "classifier", "samples", "draw", "fd", "report"])
    parser.add_argument("--dataset", choices=["mnist", "cifar10"], default="mnist")
    parser.add_argument("--work", type=Path, default=None, help="default .cache/prior_bench[_cifar10]")
    parser.add_argument("--vq-steps", type=int, default=1500)
    parser.add_argument("--prior", choices=list(PRIOR_CONFIG), default="transformer")
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--eval-every", type=float, default=60.0, help="seconds of training between test NLLs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--classifier-steps", type=int, default=1500)
    parser.add_argument("--cfg-scales", type=float, nargs="+", default=[1.0, 2.0, 3.0])
    parser.add_argument("--num-samples", type=int, default=1000, help="draw and fd: images per row")
    parser.add_argument("--classifier", type=Path, help="fd: the FD-C10 classifier's model folder")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--png", type=Path, default=None, help="default docs/prior_nll_<dataset>.png")
    parser.add_argument("--out", type=Path, default=None, help="default benchmarks/results/prior_nll_<dataset>.json")
    args = parser.parse_args()
    suffix = "" if args.dataset == "mnist" else f"_{args.dataset}"
    args.work = args.work or Path(f".cache/prior_bench{suffix}")
    args.png = args.png or Path(f"docs/prior_nll_{args.dataset}.png")
    args.out = args.out or Path(f"benchmarks/results/prior_nll_{args.dataset}.json")
    if args.stage in ("classifier", "samples") and args.dataset != "mnist":
        parser.error(f"{args.stage} is the MNIST class-conditional check")
    if args.stage == "fd" and (args.dataset != "cifar10" or args.classifier is None):
        parser.error("fd scores CIFAR-10 samples: pass --dataset cifar10 --classifier FOLDER")
    torch.set_num_threads(args.threads)
    {"codes": stage_codes, "fit": stage_fit, "classifier": stage_classifier, "samples": stage_samples,
     "draw": stage_draw, "fd": stage_fd, "report": stage_report}[args.stage](args)


if __name__ == "__main__":
    main()
