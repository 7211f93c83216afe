"""Cost of the contractive penalty: training-step time of ContractiveAutoencoder (stochastic, exact) against a plain
Autoencoder with the same networks, measured side by side in one run.

Each repetition times ``--steps`` optimizer steps (loss, backward, Adam) of every model in turn, the order rotating
between repetitions so that a slow spell of a shared machine hits all of them; the table gives the median
per-step time and its ratio to the plain autoencoder's. Synthetic MNIST-shaped batches (the cost does not depend
on the pixel values).

    python benchmarks/cae_cost.py --network mlp conv
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

from lightning_ae import Autoencoder, AutoencoderBase, ContractiveAutoencoder
from lightning_ae.nets import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder

SHAPE = (1, 28, 28)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--network", nargs="+", default=["mlp", "conv"], choices=["mlp", "conv"])
    p.add_argument("--latent-dim", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--reps", type=int, default=7, help="interleaved repetitions")
    p.add_argument("--steps", type=int, default=5, help="optimizer steps per model and repetition")
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args()


def networks(kind: str, latent_dim: int) -> tuple[nn.Module, nn.Module]:
    if kind == "mlp":  # the networks of benchmarks/regularized.py
        return MLPEncoder(SHAPE, latent_dim, hidden_dims=(256,)), MLPDecoder(SHAPE, latent_dim, hidden_dims=(256,))
    return ConvEncoder(SHAPE, latent_dim), ConvDecoder(SHAPE, latent_dim)


def models(kind: str, latent_dim: int) -> dict[str, AutoencoderBase]:
    torch.manual_seed(0)
    encoder, decoder = networks(kind, latent_dim)

    def nets() -> dict[str, nn.Module]:
        return {"encoder": copy.deepcopy(encoder), "decoder": copy.deepcopy(decoder), "latent_dim": latent_dim}

    return {
        "ae": Autoencoder(**nets(), reconstruction="bce"),
        "cae-stochastic": ContractiveAutoencoder(**nets(), reconstruction="bce", penalty="stochastic"),
        "cae-exact": ContractiveAutoencoder(**nets(), reconstruction="bce", penalty="exact"),
    }


def time_steps(model: AutoencoderBase, optimizer: torch.optim.Optimizer, x: torch.Tensor, steps: int) -> float:
    """Seconds per optimizer step, averaged over ``steps``."""
    start = time.perf_counter()
    for _ in range(steps):
        loss = model.loss_terms(x, "train")[0]["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps


def measure(kind: str, args: argparse.Namespace) -> dict[str, float]:
    ms = models(kind, args.latent_dim)
    optimizers = {name: torch.optim.Adam(m.parameters(), lr=1e-3) for name, m in ms.items()}
    x = torch.rand(args.batch_size, *SHAPE, generator=torch.Generator().manual_seed(0))
    names = list(ms)
    for name in names:  # warm-up
        time_steps(ms[name], optimizers[name], x, 1)
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(args.reps):
        for name in names[rep % len(names):] + names[: rep % len(names)]:
            times[name].append(time_steps(ms[name], optimizers[name], x, args.steps))
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    print(f"batch {args.batch_size}, latent {args.latent_dim}, {args.reps} interleaved repetitions of {args.steps} "
          f"steps, torch threads {args.threads}\n")
    print("| network | model | median step (ms) | ratio to ae |")
    print("| --- | --- | --- | --- |")
    for kind in args.network:
        medians = measure(kind, args)
        for name, t in medians.items():
            print(f"| {kind} | {name} | {t * 1000:.1f} | {t / medians['ae']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
