"""Cost of the contractive penalty: training-step time of ContractiveAutoencoder (stochastic, exact) against a plain
Autoencoder with the same networks, measured side by side in one run.

Each repetition times ``--steps`` optimizer steps (loss, backward, Adam) of every model in turn, the order rotating
between repetitions so that a slow spell of a shared machine hits all of them; the table gives the median
per-step time and its ratio to the plain autoencoder's. Synthetic MNIST-shaped batches (the cost does not depend
on the pixel values).

``exact`` builds the full Jacobian (one vector-Jacobian product per code unit and sample): on the convolutional
encoder one step takes seconds, so it is timed with ``--exact-steps`` steps in the first ``--exact-reps``
repetitions only (still interleaved with the others); the table says how many steps each median is over.

    python benchmarks/cae_cost.py                       # mlp and conv, 1 torch thread
    python benchmarks/cae_cost.py --network conv --no-exact
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
    p.add_argument("--exact-steps", type=int, default=1, help="steps of cae-exact per repetition")
    p.add_argument("--exact-reps", type=int, default=3, help="repetitions that time cae-exact (the first ones)")
    p.add_argument("--no-exact", action="store_true", help="do not time cae-exact")
    p.add_argument("--threads", type=int, default=1, help="torch threads (more than the free cores is much slower)")
    return p.parse_args()


def networks(kind: str, latent_dim: int) -> tuple[nn.Module, nn.Module]:
    if kind == "mlp":  # the networks of benchmarks/regularized.py
        return MLPEncoder(SHAPE, latent_dim, hidden_dims=(256,)), MLPDecoder(SHAPE, latent_dim, hidden_dims=(256,))
    return ConvEncoder(SHAPE, latent_dim), ConvDecoder(SHAPE, latent_dim)


def models(kind: str, latent_dim: int, exact: bool = True) -> dict[str, AutoencoderBase]:
    torch.manual_seed(0)
    encoder, decoder = networks(kind, latent_dim)

    def nets() -> dict[str, nn.Module]:
        return {"encoder": copy.deepcopy(encoder), "decoder": copy.deepcopy(decoder), "latent_dim": latent_dim}

    ms: dict[str, AutoencoderBase] = {
        "ae": Autoencoder(**nets(), recon_loss="bce"),
        "cae-stochastic": ContractiveAutoencoder(**nets(), recon_loss="bce", penalty="stochastic"),
    }
    if exact:
        ms["cae-exact"] = ContractiveAutoencoder(**nets(), recon_loss="bce", penalty="exact")
    return ms


def time_steps(model: AutoencoderBase, optimizer: torch.optim.Optimizer, x: torch.Tensor, steps: int) -> float:
    """Seconds per optimizer step, averaged over ``steps``."""
    start = time.perf_counter()
    for _ in range(steps):
        loss = model.loss_terms(x, "train").loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps


def measure(kind: str, args: argparse.Namespace) -> dict[str, tuple[float, int]]:
    """Median seconds per step of each model and the number of steps it is over."""
    ms = models(kind, args.latent_dim, exact=not args.no_exact)
    optimizers = {name: torch.optim.Adam(m.parameters(), lr=1e-3) for name, m in ms.items()}
    x = torch.rand(args.batch_size, *SHAPE, generator=torch.Generator().manual_seed(0))
    names = list(ms)
    for name in names:  # warm-up
        time_steps(ms[name], optimizers[name], x, 1)
    times: dict[str, list[float]] = {name: [] for name in names}
    steps = {name: args.exact_steps if name == "cae-exact" else args.steps for name in names}
    for rep in range(args.reps):
        for name in names[rep % len(names):] + names[: rep % len(names)]:
            if name == "cae-exact" and rep >= args.exact_reps:
                continue
            times[name].append(time_steps(ms[name], optimizers[name], x, steps[name]))
    return {name: (statistics.median(t), len(t) * steps[name]) for name, t in times.items()}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    print(f"batch {args.batch_size}, latent {args.latent_dim}, {args.reps} interleaved repetitions of {args.steps} "
          f"steps (cae-exact: the first {args.exact_reps} of {args.exact_steps} step(s)), "
          f"torch threads {args.threads}\n", flush=True)
    print("| network | model | median step (ms) | ratio to ae | steps timed |")
    print("| --- | --- | --- | --- | --- |", flush=True)
    ratios = {}
    for kind in args.network:
        medians = measure(kind, args)
        ae = medians["ae"][0]
        for name, (t, n) in medians.items():
            print(f"| {kind} | {name} | {t * 1000:.1f} | {t / ae:.2f} | {n} |", flush=True)
        ratios[kind] = medians["cae-stochastic"][0] / ae
    for kind, r in ratios.items():
        print(f"\n{kind}: cae-stochastic / ae step time {r:.2f}x (floor <= 2.5x): {'met' if r <= 2.5 else 'NOT MET'}",
              end="")
    print()


if __name__ == "__main__":
    main()
