"""VQ-VAE quality on CIFAR-10 in the setting of DeepMind's sonnet VQ-VAE example.

Sonnet's example: 128 hidden channels, 2 residual blocks of 32, D=64, K=512, beta=0.25, EMA decay 0.99, Adam 3e-4,
batch 32, pixels in [-0.5, 0.5]; its loss and its error divide the reconstruction MSE by the training-set pixel
variance (``VQVAE(data_variance=...)``; the ``unscaled`` variant leaves the loss's MSE undivided). Like its log we
report the mean over the last 100 training steps of that error and of the batch perplexity (their log: 0.105 / 72
at 1k steps, 0.081 / 154 at 2k, 0.056 / 326 at 10k). We also report the same error on held-out validation images
and the validation-set codebook perplexity at each report step.

    LIGHTNING_AE_CIFAR10=/path/holding/cifar-10-batches-py \
        python benchmarks/vqvae_cifar.py --variant sonnet --steps 2000 --report-at 1000 2000
    python benchmarks/vqvae_cifar.py --summarize     # mean, sd and range over the seeds run so far

``--quantizer`` swaps the quantizer, everything else as in the sonnet setting (D=64, same encoder and
decoder), and ``--eval-set test`` scores the 10,000 test images (error, perplexity and used fraction of the codes):

    python benchmarks/vqvae_cifar.py --variant sonnet --quantizer fsq --steps 2000 --report-at 1000 2000 \
        --eval-set test --val-images 10000

| ``--quantizer`` | quantizer |
| --- | --- |
| ``vq`` | today's default: ``VectorQuantizer(512, 64)``, EMA |
| ``vq_rotation`` | the same with the rotation trick |
| ``vq_factorized`` | ``VectorQuantizer(512, 64, codebook_dim=8, cosine=True)`` (EMA) |
| ``vq_restart`` | ``VectorQuantizer(512, 64, kmeans_init=True, restart_threshold=1.0)``: k-means, restarts |
| ``vq_factorized_restart`` | the factorized cosine VQ with the same k-means init and restarts |
| ``fsq`` | ``FSQ([8, 5, 5, 5], code_dim=64)``: 1,000 codes |
| ``lfq`` | ``LFQ(1024, code_dim=64)``: 2^10 codes |
| ``rvq`` | ``ResidualVQ(4, 512, 64)``: 4 levels of 512 (EMA) |

``--jpeg-quality Q`` re-compresses the training and validation images as JPEG at quality Q first: the CIFAR-10
here is a JPEG copy (about quality 75) of the original, and this measures how much such compression moves the
figures.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lightning_ae import FSQ, LFQ, VQVAE, CIFAR10DataModule, CodebookUsage, ResidualVQ, VectorQuantizer
from lightning_ae.quantizers import Quantizer

VARIANTS = {  # the VQ-VAE's options, and (key "quantizer") the default VectorQuantizer's
    "sonnet": {"weight_init": "sonnet"},
    "unscaled": {"data_variance": 1.0},
    "kmeans_restart": {"weight_init": "sonnet", "quantizer": {"kmeans_init": True, "restart_threshold": 1.0}},
    "learned_codebook": {"weight_init": "sonnet", "quantizer": {"ema": False}},
}

QUANTIZERS = ("vq", "vq_rotation", "vq_factorized", "vq_restart", "vq_factorized_restart", "fsq", "lfq", "rvq")


def build_quantizer(name: str) -> Quantizer | None:
    """The quantizer of a ``--quantizer`` row (``None``: the VQ-VAE builds its default from the variant)."""
    return {
        "vq": lambda: None,
        "vq_rotation": lambda: VectorQuantizer(512, 64, rotation_trick=True),
        "vq_factorized": lambda: VectorQuantizer(512, 64, codebook_dim=8, cosine=True),
        "vq_restart": lambda: VectorQuantizer(512, 64, kmeans_init=True, restart_threshold=1.0),
        "vq_factorized_restart": lambda: VectorQuantizer(512, 64, codebook_dim=8, cosine=True, kmeans_init=True,
                                                         restart_threshold=1.0),
        "fsq": lambda: FSQ([8, 5, 5, 5], code_dim=64),
        "lfq": lambda: LFQ(1024, code_dim=64),
        "rvq": lambda: ResidualVQ(4, 512, 64),
    }[name]()


def batches(images: torch.Tensor, batch_size: int, seed: int):
    """Endless shuffled epochs of uint8 batches."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        for idx in torch.randperm(images.shape[0], generator=gen).split(batch_size):
            if idx.numel() == batch_size:
                yield images[idx]


def jpeg_recompressed(images: torch.Tensor, quality: int) -> torch.Tensor:
    """``uint8 (N, 3, H, W)`` images after a JPEG round trip at ``quality`` (Pillow's defaults otherwise)."""
    out = np.empty_like(images.numpy())
    for i, image in enumerate(images.numpy()):
        buffer = io.BytesIO()
        Image.fromarray(image.transpose(1, 2, 0)).save(buffer, format="JPEG", quality=quality)
        out[i] = np.asarray(Image.open(buffer).convert("RGB")).transpose(2, 0, 1)
    return torch.from_numpy(out)


def run_name(args: argparse.Namespace) -> str:
    quantizer = "" if args.quantizer == "vq" else f"_{args.quantizer}"
    evaluation = "_test" if args.eval_set == "test" else ""
    return args.variant + quantizer + evaluation + (f"_jpeg{args.jpeg_quality}" if args.jpeg_quality else "")


@torch.no_grad()
def evaluate(model: VQVAE, dm: CIFAR10DataModule, images: torch.Tensor, variance: float) -> dict[str, float]:
    model.eval()
    quantizer = model.quantizer
    usage, se, n = CodebookUsage(quantizer.codebook_size, quantizer.indices_per_position), 0.0, 0
    for chunk in images.split(500):
        x = dm.transform(chunk, training=False)
        q = model.quantize(model.encode(x))
        se += torch.sum((model.decoder(q.quantized) - x) ** 2).item()
        n += x.numel()
        usage.update(q.indices)
    model.train()
    figures = usage.compute()
    return {"val_error": se / n / variance, "val_perplexity": figures["perplexity"].item(),
            "val_used_fraction": figures["used_fraction"].item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="sonnet")
    parser.add_argument("--quantizer", choices=QUANTIZERS, default="vq")
    parser.add_argument("--eval-set", choices=["val", "test"], default="val",
                        help="the images scored at report steps (the val_* figures): the first --val-images of it")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--report-at", type=int, nargs="+", default=[1000, 2000])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--val-images", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--jpeg-quality", type=int, default=0, help="re-compress the images first (0: no)")
    parser.add_argument("--summarize", action="store_true", help="summarize the result files in --out and exit")
    parser.add_argument("--save-model", type=Path, default=None,
                        help="write the trained model as a model folder (for benchmarks/fd_c10.py)")
    args = parser.parse_args()
    if not 0 <= args.jpeg_quality <= 95:
        parser.error(f"--jpeg-quality must be in [1, 95] (0: no re-compression), got {args.jpeg_quality}")
    if args.summarize:
        summarize(args.out)
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    dm = CIFAR10DataModule(data_dir=os.environ["LIGHTNING_AE_CIFAR10"], download=False, pixel_range=(-0.5, 0.5))
    dm.setup("fit")
    if args.eval_set == "test":
        dm.setup("test")
    val_images = (dm.test_set if args.eval_set == "test" else dm.val_set).images[: args.val_images]
    if args.jpeg_quality:
        dm.train_set.images = jpeg_recompressed(dm.train_set.images, args.jpeg_quality)
        val_images = jpeg_recompressed(val_images, args.jpeg_quality)
    train_images = dm.train_set.images
    variance = dm.pixel_variance()
    quantizer = build_quantizer(args.quantizer)
    setting = {"data_variance": variance, **VARIANTS[args.variant]}
    vq_options = setting.pop("quantizer", {})
    if quantizer is None:
        quantizer = VectorQuantizer(**{"num_codes": 512, "code_dim": 64, "ema": True, "decay": 0.99, "beta": 0.25,
                                       **vq_options})
    model = VQVAE(image_shape=(3, 32, 32), pixel_range=(-0.5, 0.5), latent_dim=64, quantizer=quantizer, **setting)
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    errors, perplexities, rows, start = [], [], [], time.perf_counter()
    model.train()
    for step, images in enumerate(batches(train_images, args.batch_size, args.seed), start=1):
        x = dm.transform(images, training=True)
        terms = model.loss_terms(x, "train").as_dict()
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        opt.step()
        errors.append(terms["recon"].item() / variance)
        perplexities.append(terms["perplexity"].item())
        if step in args.report_at:
            row = {"step": step, "train_error": sum(errors[-100:]) / len(errors[-100:]),
                   "train_perplexity": sum(perplexities[-100:]) / len(perplexities[-100:]),
                   **evaluate(model, dm, val_images, variance), "seconds": time.perf_counter() - start}
            rows.append(row)
            print(json.dumps(row), flush=True)
            save(args, variance, rows)
        elif step % 100 == 0:
            print(f"step {step} error {errors[-1]:.4f} perplexity {perplexities[-1]:.1f} "
                  f"{step / (time.perf_counter() - start):.2f} steps/s", flush=True)
        if step >= args.steps:
            break
    if args.save_model:
        model.save_pretrained(args.save_model)


def save(args: argparse.Namespace, variance: float, rows: list[dict[str, float]]) -> None:
    """Writes the rows so far (atomically), so a long run stopped early keeps its report steps."""
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"variant": run_name(args), "seed": args.seed, "variance": variance, "batch_size": args.batch_size,
              "rows": rows}
    path = args.out / f"vqvae_cifar_{run_name(args)}_seed{args.seed}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(path)


def summarize(out: Path) -> None:
    """Prints, per variant and report step, the mean, sd and range over seeds of the train and val figures."""
    groups: dict[tuple[str, int], list[dict[str, float]]] = defaultdict(list)
    for path in sorted(out.glob("vqvae_cifar_*_seed*.json")):
        result = json.loads(path.read_text())
        for row in result["rows"]:
            groups[result["variant"], row["step"]].append(row)
    for (variant, step), rows in sorted(groups.items()):
        cells = []
        for key in ("train_error", "train_perplexity", "val_error", "val_perplexity", "val_used_fraction"):
            values = [row[key] for row in rows if key in row]
            if not values:
                continue
            sd = statistics.stdev(values) if len(values) > 1 else float("nan")
            mean, low, high = statistics.mean(values), min(values), max(values)
            cells.append(f"  {key:16s} {mean:8.4g} sd {sd:6.2g} [{low:.4g}, {high:.4g}]")
        print(f"{variant} step {step} seeds {len(rows)}", *cells, sep="\n")


if __name__ == "__main__":
    main()
