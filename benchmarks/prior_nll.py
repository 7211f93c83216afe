"""Priors over the codes of an MNIST VQ-VAE: the transformer against the gated PixelCNN at the same wall-clock budget
(test NLL in bits per code, with the curve), and class-conditional transformer samples recognised by a classifier.

Stages, each its own process (run ``fit`` of the two priors side by side, one thread each, so the machine's noise
hits both alike; nothing else may run meanwhile):

    export LIGHTNING_AE_DATA=/path/holding/MNIST                     # the MNIST IDX files
    python benchmarks/prior_nll.py codes --work .cache/prior_bench    # VQ-VAE of configs/mnist/vqvae.yaml, codes
    python benchmarks/prior_nll.py fit --prior pixelcnn --minutes 15 --threads 1 &
    python benchmarks/prior_nll.py fit --prior transformer --minutes 15 --threads 1; wait
    python benchmarks/prior_nll.py fit --prior transformer-cond --minutes 10 --threads 1 &
    python benchmarks/prior_nll.py classifier --threads 1; wait
    python benchmarks/prior_nll.py samples                            # 1,000 class-conditional samples, classified
    python benchmarks/prior_nll.py report                             # the table and docs/prior_nll_mnist.png

``codes`` trains the VQ-VAE of ``configs/mnist/vqvae.yaml`` (K=512, D=64, EMA, k-means init, restarts; hidden 128)
for ``--vq-steps`` steps and stores it as a model folder with the code indices of the training and test splits.
``fit`` trains one prior from the library (``PixelCNNPrior`` with the settings of ``configs/mnist/vqvae_prior.yaml``;
``TransformerPrior`` with those of ``configs/mnist/transformer_prior.yaml``, unconditional for the NLL comparison,
class-conditional for ``transformer-cond``) on the cached training codes with the configs' optimizers, for
``--minutes`` of training time (evaluation excluded), evaluating the test NLL of all 10,000 test grids every
``--eval-every`` seconds. ``samples`` draws 100 samples per class from ``transformer-cond`` at several guidance
scales and counts those a small CNN classifier (trained by ``classifier``, its test accuracy reported) assigns to
the requested class.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lightning_ae import VQVAE, MNISTDataModule, PixelCNNPrior, TransformerPrior, VectorQuantizer


def batches(n: int, batch_size: int, gen: torch.Generator):
    while True:
        yield from torch.randperm(n, generator=gen).split(batch_size)


def mnist() -> MNISTDataModule:
    dm = MNISTDataModule(data_dir=os.environ["LIGHTNING_AE_DATA"], download=False, val_size=5000)
    dm.setup("fit")
    dm.setup("test")
    return dm


# ---- stage 1: the VQ-VAE and its codes ----------------------------------------------------------------------------
def stage_codes(args: argparse.Namespace) -> None:
    dm, gen = mnist(), torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = VQVAE(image_shape=(1, 28, 28), latent_dim=64, hidden_channels=128, res_channels=32, num_res_blocks=2,
                  quantizer=VectorQuantizer(512, 64, beta=0.25, ema=True, decay=0.99, kmeans_init=True,
                                            restart_threshold=1.0)).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    images, start = dm.train_set.images, time.perf_counter()
    for step, idx in enumerate(batches(images.shape[0], 128, gen), start=1):
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
    meta = {"vq_steps": args.vq_steps, "test_mse": se / x.numel(), "seconds": time.perf_counter() - start}
    (args.work / "vqvae.json").write_text(json.dumps(meta, indent=2))
    print(json.dumps(meta))


# ---- stage 2: a prior for a wall-clock budget --------------------------------------------------------------------
def build_prior(kind: str, folder: Path) -> tuple[PixelCNNPrior | TransformerPrior, torch.optim.Optimizer]:
    if kind == "pixelcnn":  # configs/mnist/vqvae_prior.yaml
        prior = PixelCNNPrior(str(folder), channels=64, num_layers=8, kernel_size=5)
        return prior, torch.optim.Adam(prior.network_parameters(), lr=1e-3)
    # configs/mnist/transformer_prior.yaml
    prior = TransformerPrior(str(folder), dim=128, num_layers=4, num_heads=4, dropout=0.1, class_dropout=0.1,
                             num_classes=10, class_conditional=kind == "transformer-cond")
    return prior, torch.optim.AdamW(prior.network_parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.01)


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
    prior, opt = build_prior(args.prior, args.work / "vqvae")
    prior.train()
    budget, trained, cpu, step, curve = args.minutes * 60, 0.0, 0.0, 0, []
    next_eval = 0.0
    for idx in batches(train.shape[0], 128, gen):
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
    prior.save_pretrained(args.work / f"prior-{args.prior}")
    (args.work / f"fit-{args.prior}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "curve"}))


# ---- stage 3: the classifier and the conditional samples ----------------------------------------------------------
def small_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))


def stage_classifier(args: argparse.Namespace) -> None:
    dm, gen = mnist(), torch.Generator().manual_seed(0)
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
    for name in ("classifier", "samples"):
        if (args.work / f"{name}.json").is_file():
            out[name] = json.loads((args.work / f"{name}.json").read_text())
    ax.set_xlabel("training minutes (one thread)")
    ax.set_ylabel("test NLL, bits per code")
    ax.set_ylim(top=4.5)
    ax.legend()
    ax.grid(alpha=0.3)
    args.png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png, dpi=100, bbox_inches="tight")
    summary = {k: ({kk: vv for kk, vv in v.items() if kk != "curve"} if isinstance(v, dict) else v)
               for k, v in out.items()}
    print(json.dumps(summary, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=["codes", "fit", "classifier", "samples", "report"])
    parser.add_argument("--work", type=Path, default=Path(".cache/prior_bench"))
    parser.add_argument("--vq-steps", type=int, default=1500)
    parser.add_argument("--prior", choices=["pixelcnn", "transformer", "transformer-cond"], default="transformer")
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--eval-every", type=float, default=60.0, help="seconds of training between test NLLs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--classifier-steps", type=int, default=1500)
    parser.add_argument("--cfg-scales", type=float, nargs="+", default=[1.0, 2.0, 3.0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--png", type=Path, default=Path("docs/prior_nll_mnist.png"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/prior_nll_mnist.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    {"codes": stage_codes, "fit": stage_fit, "classifier": stage_classifier, "samples": stage_samples,
     "report": stage_report}[args.stage](args)


if __name__ == "__main__":
    main()
