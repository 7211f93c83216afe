"""``benchmarks/gpu.sh``: refuses cleanly without a GPU or data; on the CPU its smoke mode runs every step."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import write_mnist

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu.sh"


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=environ, timeout=600)


def test_refuses_without_a_gpu(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    out = tmp_path / "out"
    result = _run(str(tmp_path), str(out), CUDA_VISIBLE_DEVICES="")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("gpu.sh: no CUDA GPU visible to torch")
    assert "nothing run" in result.stderr and result.stdout == "" and not out.exists()


@pytest.mark.parametrize("args", [(), ("a", "b", "c")])
def test_refuses_bad_arguments(args: tuple[str, ...]) -> None:
    result = _run(*args)
    assert result.returncode == 2 and "usage: benchmarks/gpu.sh DATA_DIR [OUT_DIR]" in result.stderr


def test_refuses_a_folder_without_mnist(tmp_path: Path) -> None:
    result = _run(str(tmp_path))
    assert result.returncode == 2 and f"{tmp_path}/MNIST/raw not found" in result.stderr


@pytest.mark.slow
def test_smoke_mode_runs_every_benchmark_on_cpu(real_mnist_dir: Path, tmp_path: Path) -> None:
    result = _run(str(real_mnist_dir), str(tmp_path), GPU_SH_SMOKE="1", OMP_NUM_THREADS="1")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    names = ["ae_fp32_bus", "ae_fp32", "ae_bf16", "ae_bf16_compile", "ae_fp32_batch512", "vae_bf16", "vqvae_fp32",
             "vqvae_bf16", "vqvae_bf16_compile"]
    for name in names:
        result_json = json.loads((tmp_path / f"{name}.json").read_text())
        assert result_json["ratio_wall_clock"] > 0 and len(result_json["ours"]) == 1
    assert json.loads((tmp_path / "ae_bf16_compile.json").read_text())["args"]["compile"] is True
    assert json.loads((tmp_path / "quantizer_speed.json").read_text())["device"] == "cpu"
    for variant in ("autoencoder_kl", "autoencoder_kl_gan", "vqgan"):
        for precision in ("fp32", "bf16", "bf16_compile"):
            ldm = json.loads((tmp_path / f"{variant}_{precision}.json").read_text())
            assert ldm["images_per_s"]["median"] > 0 and ldm["compile"] is (precision == "bf16_compile")
