"""FD-C10: a Fréchet distance that runs on a CPU with no downloaded weights, on the penultimate features of a
CIFAR-10 classifier trained here (configs/cifar10/classifier.yaml, >= 85% test accuracy), with PSNR and SSIM, for
CIFAR-10 models given as model folders or checkpoints. FD-C10 is NOT comparable with published rFIDs (another
network, another resolution); compare FD-C10 with FD-C10, and with its floor, the FD-C10 between the test and the
training images.

Protocol: the 10,000 test images at 32x32, no resizing, every one reconstructed deterministically (a VAE decodes
its posterior mean), pixels mapped from the model's range to [0, 1] and clamped; PSNR per image, averaged; SSIM
with torchmetrics' 11x11 Gaussian window; the Fréchet distance between the real test images' features and their
reconstructions' (float64 statistics).

    lightning-ae fit --config configs/cifar10/classifier.yaml --save_pretrained cifar10-classifier
    python benchmarks/fd_c10.py --cifar-dir .cache/cifar --classifier cifar10-classifier \
        --models vq=vq-folder fsq=fsq-folder kl=checkpoints/cifar10_autoencoder_kl/best.ckpt
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from lightning.pytorch import Trainer

from lightning_ae import CIFAR10DataModule
from lightning_ae.callbacks.evaluation import build_yardstick
from lightning_ae.evaluate import evaluate_model
from lightning_ae.pretrained import load_model

FLOOR_ACCURACY = 0.85


def classifier_accuracy(folder: str, cifar_dir: str) -> float:
    """Test accuracy of the classifier folder on the 10,000 CIFAR-10 test images."""
    classifier = load_model(folder)
    data = CIFAR10DataModule(data_dir=cifar_dir, download=False, pixel_range=classifier.pixel_range, batch_size=500)
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    return float(trainer.test(classifier, datamodule=data, verbose=False)[0]["test/accuracy"])


def floor(classifier: str, cifar_dir: str) -> float:
    """FD-C10 between the test images and the 50,000 training images (train and validation splits together)."""
    data = CIFAR10DataModule(data_dir=cifar_dir, download=False, val_size=5000)
    data.setup("fit")
    data.setup("test")
    metric = build_yardstick("fd", feature_network=classifier, image_shape=(3, 32, 32))
    with torch.no_grad():
        for images in data.test_set.images.split(500):
            metric.update_real(images.float() / 255)
        for split in (data.train_set, data.val_set):
            for images in split.images.split(500):
                metric.update_fake(images.float() / 255)
    return float(metric.compute())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cifar-dir", default=os.environ.get("LIGHTNING_AE_CIFAR10"))
    parser.add_argument("--classifier", required=True, help="the classifier's model folder")
    parser.add_argument("--models", nargs="*", default=[], help="name=folder-or-checkpoint ...")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "fd_c10.json")
    args = parser.parse_args()
    if not args.cifar_dir:
        parser.error("--cifar-dir (or LIGHTNING_AE_CIFAR10) must name the folder holding cifar-10-batches-py")
    start = time.perf_counter()
    accuracy = classifier_accuracy(args.classifier, args.cifar_dir)
    print(f"classifier {args.classifier}: test accuracy {accuracy:.4f}")
    if accuracy < FLOOR_ACCURACY:
        sys.exit(f"the classifier's test accuracy {accuracy:.4f} is below {FLOOR_ACCURACY}: train it longer")
    result = {"classifier_accuracy": accuracy, "floor_test_vs_train": floor(args.classifier, args.cifar_dir),
              "models": {},
              "torch": torch.__version__, "machine": f"{platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} cores"}
    print(f"FD-C10 floor (test vs train images): {result['floor_test_vs_train']:.3f}")
    for spec in args.models:
        name, _, path = spec.partition("=")
        model = load_model(path)
        data = CIFAR10DataModule(data_dir=args.cifar_dir, download=False, pixel_range=model.pixel_range,
                                 batch_size=250)
        figures = evaluate_model(model, data, ["psnr", "ssim", "fd"], "test", "cpu", 1,
                                 feature_network=args.classifier, fd_name="fd_c10")
        result["models"][name] = figures
        print(f"{name}: PSNR {figures['test/psnr_per_image']:.2f} dB per image ({figures['test/psnr']:.2f} of the "
              f"split's MSE), SSIM {figures['test/ssim']:.4f}, FD-C10 {figures['test/fd_c10']:.3f}")
    result["seconds"] = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(args.out)


if __name__ == "__main__":
    main()
