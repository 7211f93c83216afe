"""Regularized autoencoders on real MNIST: what each regularizer buys, beside the plain autoencoder.

Trains the plain Autoencoder, a DenoisingAutoencoder, SparseAutoencoders (kl, topk) and a ContractiveAutoencoder
with the same MLP networks and the same number of epochs, then reports on the MNIST test set: MSE of clean
reconstructions, MSE to the clean image from corrupted inputs (the same corrupted inputs for every model), code
statistics, the mean encoder Jacobian norm ||J_f(x)||_F (exact) and linear-probe accuracy; then checks the floors of
our floors against the plain autoencoder (DAE: lower MSE from corrupted inputs; SAE kl: mean activation within 20 % of
rho; topk: exactly k active units; CAE: Jacobian norm >= 5x smaller at test MSE <= 1.5x).

Training dominates the cost (5 models x 5 epochs over 55,000 images; no per-epoch validation: nothing here reads
it); the evaluation of each model (exact Jacobian on --jacobian-samples test images, linear probe) is a few seconds.

    LIGHTNING_AE_DATA=/path/with/MNIST/raw python benchmarks/regularized.py            # 5 epochs, all variants
    LIGHTNING_AE_DATA=/path/with/MNIST/raw python benchmarks/regularized.py --only ae cae-stochastic --cae-weight 1e-3
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import torch
from lightning.pytorch import Trainer, seed_everything

from lightning_ae import (
    Autoencoder,
    AutoencoderBase,
    ContractiveAutoencoder,
    DenoisingAutoencoder,
    MNISTDataModule,
    SparseAutoencoder,
)
from lightning_ae.callbacks.probe import linear_probe
from lightning_ae.corruptions import corrupt
from lightning_ae.losses import contractive_penalty_exact
from lightning_ae.nets import MLPDecoder, MLPEncoder


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=os.environ.get("LIGHTNING_AE_DATA"), help="folder with MNIST/raw")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--latent-dim", type=int, default=64)
    p.add_argument("--hidden", type=int, default=256, help="width of the single hidden layer of encoder/decoder")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--corruption", default="masking", choices=["gaussian", "masking", "salt_and_pepper"])
    p.add_argument("--noise-level", type=float, default=0.5)
    p.add_argument("--rho", type=float, default=0.05)
    p.add_argument("--beta", type=float, default=0.1, help="weight of the KL sparsity term")
    p.add_argument("--k", type=int, default=16, help="units kept by the top-k SAE")
    p.add_argument("--cae-weight", type=float, default=3e-4,
                   help="lambda of the contractive penalty (the reconstruction term is a per-pixel mean)")
    p.add_argument("--jacobian-samples", type=int, default=10_000,
                   help="first N test images on which the exact Jacobian norm is averaged")
    p.add_argument("--only", nargs="*", help="run only these variants (names of the table)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (more than the free cores is much slower)")
    return p.parse_args()


def variants(args: argparse.Namespace) -> dict[str, Callable[..., AutoencoderBase]]:
    common = {"latent_dim": args.latent_dim, "recon_loss": "bce", "num_classes": 10}
    noise = {"noise_std" if args.corruption == "gaussian" else "noise_fraction": args.noise_level}
    return {
        "ae": lambda **n: Autoencoder(**n, **common),
        f"dae-{args.corruption}": lambda **n: DenoisingAutoencoder(
            **n, **common, **noise, corruption=args.corruption),
        "sae-kl": lambda **n: SparseAutoencoder(**n, **common, sparsity="kl", rho=args.rho,
                                                sparsity_weight=args.beta),
        "sae-topk": lambda **n: SparseAutoencoder(**n, **common, sparsity="topk", k=args.k),
        "cae-stochastic": lambda **n: ContractiveAutoencoder(**n, **common, penalty="stochastic",
                                                             contractive_weight=args.cae_weight),
    }


def networks(args: argparse.Namespace) -> dict[str, torch.nn.Module]:
    shape = (1, 28, 28)
    return {"encoder": MLPEncoder(shape, args.latent_dim, hidden_dims=(args.hidden,)),
            "decoder": MLPDecoder(shape, args.latent_dim, hidden_dims=(args.hidden,))}


def code_statistics(model: AutoencoderBase, z: torch.Tensor) -> tuple[float, float]:
    """Mean activation and mean number of active units per sample (> 0.5 for sigmoid codes, else != 0)."""
    active = z > 0.5 if getattr(model, "sparsity", None) == "kl" else z != 0
    return z.mean().item(), active.float().sum(1).mean().item()


@torch.no_grad()
def evaluate(model: AutoencoderBase, x: torch.Tensor, x_corrupted: torch.Tensor, jacobian_samples: int
             ) -> dict[str, float]:
    model.eval()
    z = torch.cat([model.encode(b) for b in x.split(1000)])
    x_hat = torch.cat([model.output_to_image(model.decode(b)) for b in z.split(1000)])
    x_hat_c = torch.cat([model(b) for b in x_corrupted.split(1000)])
    with torch.enable_grad():
        jac = torch.cat([contractive_penalty_exact(model.encode, b).detach() for b in x[:jacobian_samples].split(250)])
    mean_act, active = code_statistics(model, z)
    return {"mse": (x_hat - x).pow(2).mean().item(), "mse_corrupted": (x_hat_c - x).pow(2).mean().item(),
            "mean_activation": mean_act, "active_units": active, "jacobian_norm": jac.sqrt().mean().item()}


def main() -> None:
    t0 = time.perf_counter()
    args = parse_args()
    torch.set_num_threads(args.threads)
    if not args.data_dir:
        raise SystemExit("set LIGHTNING_AE_DATA (a folder with MNIST/raw) or pass --data-dir")
    data = MNISTDataModule(data_dir=args.data_dir, download=False, batch_size=args.batch_size,
                           eval_batch_size=1000, seed=args.seed)
    data.setup("test")
    x_test = data.transform(data.test_set.images, training=False)
    x_corrupted = corrupt(x_test, args.corruption, args.noise_level,
                          generator=torch.Generator().manual_seed(args.seed + 1))
    rows = []
    for name, build in variants(args).items():
        if args.only and name not in args.only:
            continue
        seed_everything(args.seed, verbose=False)
        model = build(**networks(args))
        trainer = Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, logger=False, limit_val_batches=0,
                          enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        start = time.perf_counter()
        trainer.fit(model, datamodule=data)
        train_s = time.perf_counter() - start
        row = {"variant": name, **evaluate(model, x_test, x_corrupted, args.jacobian_samples),
               "probe_acc": linear_probe(model, data), "train_s": train_s}
        row["eval_s"] = time.perf_counter() - start - train_s
        rows.append(row)
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    print_table(rows, args)
    print_floors(rows, args)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


def print_table(rows: list[dict], args: argparse.Namespace) -> None:
    print(f"\nMNIST test set, {args.epochs} epochs, MLP 784-{args.hidden}-{args.latent_dim}, BCE, Adam 1e-3, "
          f"batch {args.batch_size}; corrupted inputs: {args.corruption} {args.noise_level}; "
          f"jacobian_norm on the first {min(args.jacobian_samples, 10_000)} test images; "
          f"sae-kl rho {args.rho} beta {args.beta}; sae-topk k {args.k}; cae lambda {args.cae_weight:g}; "
          f"torch threads {args.threads}\n")
    cols = ["variant", "mse", "mse_corrupted", "mean_activation", "active_units", "jacobian_norm", "probe_acc",
            "train_s", "eval_s"]
    print("| " + " | ".join(cols) + " |")
    print("|" + " --- |" * len(cols))
    for r in rows:
        print("| " + " | ".join(r[c] if c == "variant" else f"{r[c]:.4g}" for c in cols) + " |")


def print_floors(rows: list[dict], args: argparse.Namespace) -> None:
    """Our floors, each against the plain autoencoder of the same run."""
    by = {r["variant"]: r for r in rows}
    ae = by.get("ae")
    checks = []
    for name, r in by.items():
        if name.startswith("dae") and ae:
            checks.append((name, f"mse_corrupted {r['mse_corrupted']:.4g} < ae {ae['mse_corrupted']:.4g} "
                                 f"({ae['mse_corrupted'] / r['mse_corrupted']:.2f}x lower)",
                           r["mse_corrupted"] < ae["mse_corrupted"]))
        if name == "sae-kl":
            checks.append((name, f"mean activation {r['mean_activation']:.4g} within 20 % of rho {args.rho}",
                           abs(r["mean_activation"] - args.rho) <= 0.2 * args.rho))
        if name == "sae-topk":
            checks.append((name, f"active units {r['active_units']:.4g} == k {args.k}", r["active_units"] == args.k))
        if name.startswith("cae") and ae:
            jac, mse = ae["jacobian_norm"] / r["jacobian_norm"], r["mse"] / ae["mse"]
            checks.append((name, f"jacobian_norm {jac:.2f}x smaller than ae's (>= 5x), test mse {mse:.2f}x ae's "
                                 "(<= 1.5x)", jac >= 5 and mse <= 1.5))
    if checks:
        print("\nfloors:")
    for name, text, ok in checks:
        print(f"- {name}: {text}: {'met' if ok else 'NOT MET'}")


if __name__ == "__main__":
    main()
