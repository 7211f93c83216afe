"""Speed of one forward+backward of the vector quantizer, EMA codebook on (K=512, D=64, input 128x64x8x8):
ours vs vector-quantize-pytorch's ``VectorQuantize`` (same settings) vs a minimal hand-written EMA quantizer.

Repetitions are interleaved (each round times every implementation once, in turn), so load changes on a shared
machine hit all three alike; we report medians of the per-round times and their ratios.

    pip install -e '.[bench]'
    python benchmarks/quantizer_speed.py --rounds 30 --iters 10 --threads 1
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

from lightning_ae import VectorQuantizer

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


def step_fn(name: str, device: torch.device) -> Callable[[torch.Tensor], None]:
    """One forward+backward of the named implementation, in training mode, on ``device``."""
    if name == "ours":
        vq = VectorQuantizer(K, D, beta=BETA, ema=True, decay=DECAY, epsilon=EPS).train().to(device)

        def run(z: torch.Tensor) -> None:
            out = vq(z)
            (out.quantized.sum() + out.loss).backward()

    elif name == "minimal":
        mq = MinimalEMAQuantizer().train().to(device)

        def run(z: torch.Tensor) -> None:
            q, loss = mq(z)
            (q.sum() + loss).backward()

    else:
        from vector_quantize_pytorch import VectorQuantize

        lq = VectorQuantize(dim=D, codebook_size=K, decay=DECAY, commitment_weight=BETA, eps=EPS,
                            accept_image_fmap=True).train().to(device)

        def run(z: torch.Tensor) -> None:
            q, _, loss = lq(z)
            (q.sum() + loss.sum()).backward()

    return run


def sync(device: torch.device) -> None:
    """Waits for a GPU's queued kernels before the clock is read."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--iters", type=int, default=10, help="forward+backward passes per timed round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/quantizer_speed.json")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--implementations", default="ours,vector-quantize-pytorch,minimal",
                        help="comma-separated subset (vector-quantize-pytorch needs the bench extra)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    names = args.implementations.split(",")
    fns = {n: step_fn(n, device) for n in names}
    z = torch.randn(128, D, 8, 8, device=device, requires_grad=True)
    for fn in fns.values():  # warm-up
        for _ in range(3):
            fn(z)
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.rounds):
        for n in names:
            sync(device)
            start = time.perf_counter()
            for _ in range(args.iters):
                fns[n](z)
            sync(device)
            times[n].append((time.perf_counter() - start) / args.iters * 1e3)
    med = {n: statistics.median(t) for n, t in times.items()}
    result = {"ms_median": med, "vqp_over_ours": med.get("vector-quantize-pytorch", float("nan")) / med["ours"],
              "ours_over_minimal": med["ours"] / med.get("minimal", float("nan")),
              "device": str(device), "threads": args.threads, "rounds": args.rounds,
              "iters": args.iters, "torch": torch.__version__}
    print("| implementation | median ms / forward+backward |\n| --- | --- |")
    for n in names:
        print(f"| {n} | {med[n]:.2f} |")
    print(f"vector-quantize-pytorch / ours = {result['vqp_over_ours']:.2f}x; "
          f"ours / minimal = {result['ours_over_minimal']:.2f}x")
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
