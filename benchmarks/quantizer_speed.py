"""Speed of one forward+backward of each quantizer in training mode (input 128x64x8x8): ours vs
vector-quantize-pytorch's counterpart with matching settings, and for the EMA vector quantizer (K=512, D=64) also a
minimal hand-written EMA quantizer.

| pair | ours | vector-quantize-pytorch |
| --- | --- | --- |
| vq | ``VectorQuantizer(512, 64)`` (EMA, straight-through) | ``VectorQuantize(rotation_trick=False)`` |
| vq_rotation | ``VectorQuantizer(512, 64, rotation_trick=True)`` | ``VectorQuantize(rotation_trick=True)`` |
| fsq | ``FSQ([8, 5, 5, 5], code_dim=64)`` | ``FSQ([8, 5, 5, 5], dim=64)`` |
| fsq4 | ``FSQ([8, 5, 5, 5])`` on ``(128, 4, 16, 16)`` (no projection) | ``FSQ([8, 5, 5, 5])`` on ``(128, 256, 4)`` |
| lfq | ``LFQ(1024, code_dim=64)`` (entropy 0.1, commitment 0.25, temperature 0.01) | ``LFQ`` with the same |
| rvq | ``ResidualVQ(4, 512, 64)`` (EMA) | ``ResidualVQ(num_quantizers=4, codebook_size=512)`` |

Every pair runs on input ``128x64x8x8`` except ``fsq4``, where each library gets the same 128 x 16 x 16 grid of
4-dimensional vectors in its own natural layout (ours channel-first, vector-quantize-pytorch channel-last).

Repetitions are interleaved (each round times every implementation once, in turn), so load changes on a shared
machine hit all alike; we report medians of the per-round times and the ratio vector-quantize-pytorch / ours
(> 1: ours is faster).

    pip install -e '.[bench]'
    python benchmarks/quantizer_speed.py --rounds 30 --iters 10 --threads 1
    python benchmarks/quantizer_speed.py --pairs fsq lfq   # some pairs only
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lightning_ae import FSQ, LFQ, ResidualVQ, VectorQuantizer

K, D, DECAY, BETA, EPS = 512, 64, 0.99, 0.25, 1e-5


class MinimalEMAQuantizer(nn.Module):
    """The shortest correct EMA quantizer (van den Oord et al. 2017, Appendix A.1) built from the fastest primitives
    (bincount / index_add rather than one-hot matmuls): the lower bound our overhead is measured against."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("codebook", torch.randn(K, D))
        self.register_buffer("cluster_size", torch.ones(K))
        self.register_buffer("embed_sum", self.codebook.clone())

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = z.permute(0, 2, 3, 1).reshape(-1, D)
        e = self.codebook
        idx = ((flat.detach() ** 2).sum(1, keepdim=True) - 2 * flat.detach() @ e.t() + (e**2).sum(1)).argmin(1)
        q = e[idx]
        with torch.no_grad():
            counts = torch.bincount(idx, minlength=K).type_as(flat)  # = one_hot(idx).sum(0), without the one-hot
            sums = torch.zeros_like(self.embed_sum).index_add_(0, idx, flat.detach())  # = one_hot(idx).T @ flat
            self.cluster_size.mul_(DECAY).add_(counts, alpha=1 - DECAY)
            self.embed_sum.mul_(DECAY).add_(sums, alpha=1 - DECAY)
            n = self.cluster_size.sum()
            size = (self.cluster_size + EPS) / (n + K * EPS) * n
            self.codebook.copy_(self.embed_sum / size.unsqueeze(1))
        loss = BETA * F.mse_loss(flat, q)
        q = flat + (q - flat).detach()
        return q.reshape(z.shape[0], z.shape[2], z.shape[3], D).permute(0, 3, 1, 2), loss


def ours(name: str) -> nn.Module:
    """Our quantizer of pair ``name``."""
    if name == "fsq4":
        return FSQ([8, 5, 5, 5])
    if name == "fsq":
        return FSQ([8, 5, 5, 5], code_dim=D)
    if name == "lfq":
        return LFQ(1024, code_dim=D, beta=BETA, entropy_weight=0.1, temperature=0.01)
    if name == "rvq":
        return ResidualVQ(4, K, D, beta=BETA, ema=True, decay=DECAY, epsilon=EPS)
    return VectorQuantizer(K, D, beta=BETA, ema=True, decay=DECAY, epsilon=EPS, rotation_trick=name == "vq_rotation")


def theirs(name: str) -> nn.Module:
    """vector-quantize-pytorch's counterpart of pair ``name``, with the same settings."""
    import vector_quantize_pytorch as vqp

    if name == "fsq4":
        return vqp.FSQ([8, 5, 5, 5])
    if name == "fsq":
        return vqp.FSQ([8, 5, 5, 5], dim=D, channel_first=True)
    if name == "lfq":
        return vqp.LFQ(dim=D, codebook_size=1024, entropy_loss_weight=0.1, commitment_loss_weight=BETA,
                       channel_first=True)
    if name == "rvq":
        return vqp.ResidualVQ(dim=D, num_quantizers=4, codebook_size=K, decay=DECAY, commitment_weight=BETA, eps=EPS,
                              rotation_trick=False)  # its accept_image_fmap fails in 1.32: fed (B, h*w, D) views
    return vqp.VectorQuantize(dim=D, codebook_size=K, decay=DECAY, commitment_weight=BETA, eps=EPS,
                              accept_image_fmap=True, rotation_trick=name == "vq_rotation")


def step_fn(name: str, implementation: str, device: torch.device) -> Callable[[torch.Tensor], None]:
    """One forward+backward of pair ``name``'s ``implementation`` (ours, vqp or minimal), in training mode."""
    if implementation == "minimal":
        mq = MinimalEMAQuantizer().train().to(device)

        def run(z: torch.Tensor) -> None:
            q, loss = mq(z)
            (q.sum() + loss).backward()

    elif implementation == "ours":
        quantizer = ours(name).train().to(device)

        def run(z: torch.Tensor) -> None:
            out = quantizer(z)
            (out.quantized.sum() + out.loss).backward()

    else:
        counterpart = theirs(name).train().to(device)

        def run(z: torch.Tensor) -> None:
            out = counterpart(z.flatten(2).transpose(1, 2) if name == "rvq" else z)
            if name.startswith("fsq"):  # (quantized, indices): no loss
                out[0].sum().backward()
            else:  # (quantized, indices, loss[, ...])
                (out[0].sum() + out[2].sum()).backward()

    return run


PAIRS = ("vq", "vq_rotation", "fsq", "fsq4", "lfq", "rvq")


def inputs(name: str, implementation: str, device: torch.device) -> torch.Tensor:
    """The input of pair ``name`` for ``implementation`` (the same values for both libraries of a pair)."""
    gen = torch.Generator().manual_seed(0)
    if name == "fsq4":  # one grid of 4-d vectors: (B, 4, 16, 16) for us, (B, 256, 4) for them
        z = torch.randn(128, 4, 16, 16, generator=gen)
        z = z.flatten(2).transpose(1, 2).contiguous() if implementation == "vector-quantize-pytorch" else z
    else:
        z = torch.randn(128, D, 8, 8, generator=gen)
    return z.to(device).requires_grad_(True)
IMPLEMENTATIONS = ("ours", "vector-quantize-pytorch", "minimal")


def sync(device: torch.device) -> None:
    """Waits for a GPU's queued kernels before the clock is read."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--iters", type=int, default=10, help="forward+backward passes per timed round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--pairs", nargs="+", choices=PAIRS, default=list(PAIRS))
    parser.add_argument("--implementations", default=",".join(IMPLEMENTATIONS),
                        help="comma-separated subset of " + ",".join(IMPLEMENTATIONS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="benchmarks/results/quantizer_speed.json")
    args = parser.parse_args()
    implementations = args.implementations.split(",")
    if unknown := set(implementations) - set(IMPLEMENTATIONS):
        parser.error(f"unknown --implementations {sorted(unknown)}; choose from {IMPLEMENTATIONS}")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    runs = [(pair, impl) for pair in args.pairs for impl in ("ours", "vector-quantize-pytorch")
            if impl in implementations]
    runs += [("vq", "minimal")] if "vq" in args.pairs and "minimal" in implementations else []
    fns = {run: step_fn(*run, device) for run in runs}
    zs = {run: inputs(*run, device) for run in runs}
    for run, fn in fns.items():  # warm-up
        for _ in range(3):
            fn(zs[run])
    times: dict[tuple[str, str], list[float]] = {run: [] for run in runs}
    for _ in range(args.rounds):
        for run in runs:
            sync(device)
            start = time.perf_counter()
            for _ in range(args.iters):
                fns[run](zs[run])
            sync(device)
            times[run].append((time.perf_counter() - start) / args.iters * 1e3)
    med = {run: statistics.median(t) for run, t in times.items()}
    nan = float("nan")
    ratios = {pair: med.get((pair, "vector-quantize-pytorch"), nan) / med.get((pair, "ours"), nan)
              for pair in args.pairs}
    per_round = {pair: sorted(a / b for a, b in zip(times.get((pair, "vector-quantize-pytorch"), []),
                                                     times.get((pair, "ours"), []), strict=False))
                 for pair in args.pairs}
    print("| quantizer | ours ms | vector-quantize-pytorch ms | vqp / ours (median) | per-round ratio, 10th-90th "
          "percentile |\n| --- | --- | --- | --- | --- |")
    for pair in args.pairs:
        spread = per_round[pair]
        low, high = (spread[len(spread) // 10], spread[(9 * len(spread)) // 10]) if spread else (nan, nan)
        print(f"| {pair} | {med.get((pair, 'ours'), nan):.3f} | "
              f"{med.get((pair, 'vector-quantize-pytorch'), nan):.3f} | {ratios[pair]:.2f} | {low:.2f}-{high:.2f} |")
    if ("vq", "minimal") in med and ("vq", "ours") in med:
        print(f"minimal EMA quantizer: {med['vq', 'minimal']:.2f} ms; ours / minimal = "
              f"{med['vq', 'ours'] / med['vq', 'minimal']:.2f}x")
    result = {"ms_median": {f"{pair}/{impl}": value for (pair, impl), value in med.items()},
              "vqp_over_ours": ratios, "per_round_vqp_over_ours": per_round, "device": str(device),
              "threads": args.threads, "rounds": args.rounds,
              "iters": args.iters, "torch": torch.__version__}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
