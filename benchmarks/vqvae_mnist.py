"""MNIST VQ-VAE and its learned prior: test MSE, codebook perplexity and fraction of codes used, the prior's test
NLL (nats per code, bits per image dimension), and a grid of sampled digits (docs/vqvae_prior_samples_mnist.png).

Stage one trains a VQVAE (EMA, k-means init, restarts); stage two caches the frozen VQ-VAE's codes of the training
split once and trains a gated PixelCNN on them; samples are drawn from the prior and decoded by the VQ-VAE.

    LIGHTNING_AE_DATA=/path/holding/MNIST/raw python benchmarks/vqvae_mnist.py --vq-steps 800 --prior-steps 1500
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from lightning_ae import VQVAE, CodebookUsage, MNISTDataModule, VectorQuantizer
from lightning_ae.nets.pixelcnn import GatedPixelCNN


def random_batches(n: int, batch_size: int, gen: torch.Generator):
    while True:
        yield from torch.randperm(n, generator=gen).split(batch_size)


@torch.no_grad()
def codes_of(model: VQVAE, dm: MNISTDataModule, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([model.encode_indices(dm.transform(c, training=False)) for c in images.split(1000)])


def train_vqvae(dm: MNISTDataModule, args: argparse.Namespace, gen: torch.Generator) -> VQVAE:
    model = VQVAE(image_shape=(1, 28, 28), latent_dim=64, hidden_channels=args.hidden,
                  quantizer=VectorQuantizer(512, 64, kmeans_init=True, restart_threshold=1.0)).train()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    images = dm.train_set.images
    for step, idx in enumerate(random_batches(images.shape[0], args.batch_size, gen), start=1):
        terms = model.loss_terms(dm.transform(images[idx], training=True), "train").as_dict()
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        opt.step()
        if step % 100 == 0:
            print(f"vqvae step {step} recon {terms['recon'].item():.4f} perplexity {terms['perplexity'].item():.1f}",
                  flush=True)
        if step >= args.vq_steps:
            return model.eval()
    raise AssertionError("unreachable")


def train_prior(codes: torch.Tensor, args: argparse.Namespace, gen: torch.Generator) -> GatedPixelCNN:
    prior = GatedPixelCNN(num_codes=512, channels=64, num_layers=8, kernel_size=5).train()
    opt = torch.optim.Adam(prior.parameters(), lr=1e-3)
    for step, idx in enumerate(random_batches(codes.shape[0], args.batch_size, gen), start=1):
        loss = F.cross_entropy(prior(codes[idx]), codes[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0:
            print(f"prior step {step} nll {loss.item():.3f} nats/code", flush=True)
        if step >= args.prior_steps:
            return prior.eval()
    raise AssertionError("unreachable")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vq-steps", type=int, default=800)
    parser.add_argument("--prior-steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=64, help="hidden channels of the VQ-VAE networks")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--png", type=Path, default=Path("docs/vqvae_prior_samples_mnist.png"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/vqvae_mnist.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    dm = MNISTDataModule(data_dir=os.environ["LIGHTNING_AE_DATA"], download=False)
    dm.setup("fit")
    dm.setup("test")
    start = time.perf_counter()
    model = train_vqvae(dm, args, gen)
    test_images = dm.test_set.images
    with torch.no_grad():
        se = sum(F.mse_loss(model(dm.transform(c, False)), dm.transform(c, False), reduction="sum").item()
                 for c in test_images.split(1000))
    test_codes, train_codes = codes_of(model, dm, test_images), codes_of(model, dm, dm.train_set.images)
    usage = CodebookUsage(512)
    usage.update(test_codes)
    health = {k: v.item() for k, v in usage.compute().items()}
    prior = train_prior(train_codes, args, gen)
    with torch.no_grad():
        nats = sum(F.cross_entropy(prior(c), c, reduction="sum").item() for c in test_codes.split(1000))
        nats /= test_codes.numel()
        torch.manual_seed(1)
        samples = model.decode_indices(prior.sample(64, (7, 7))).clamp(0, 1)
    result = {"vq_steps": args.vq_steps, "prior_steps": args.prior_steps, "batch_size": args.batch_size,
              "hidden_channels": args.hidden, "test_mse": se / test_images.numel(), "test_perplexity":
              health["perplexity"], "test_used_fraction": health["used_fraction"], "prior_nll_nats_per_code": nats,
              "prior_bits_per_dim": nats * 49 / (math.log(2) * 784), "seconds": time.perf_counter() - start}
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    fig, axes = plt.subplots(8, 8, figsize=(6, 6))
    for ax, img in zip(axes.flat, samples, strict=True):
        ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
        ax.axis("off")
    fig.suptitle("VQ-VAE + gated PixelCNN prior: samples (MNIST)")
    args.png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png, dpi=100, bbox_inches="tight")


if __name__ == "__main__":
    main()
