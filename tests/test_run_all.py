"""Smoke run of benchmarks/run_all.py (slow suite): it trains, scores, runs the throughput benchmarks and writes
the results table between the markers of a README copy. No timing is asserted."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import load_script, write_mnist

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_run_all_smoke_writes_the_table(tmp_path: Path) -> None:
    write_mnist(tmp_path / "data", n_train=5400, n_test=64)  # the benchmarks hold out 5,000 for validation
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- RESULTS-TABLE:START -->\nold\n<!-- RESULTS-TABLE:END -->\nafter\n")
    command = [sys.executable, "benchmarks/run_all.py", "--smoke", "--variants", "ae", "vqvae", "--data-dir",
               str(tmp_path / "data"), "--readme", str(readme), "--work", str(tmp_path / "work")]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    text = readme.read_text()
    assert "old" not in text and text.startswith("# x\n") and text.endswith("<!-- RESULTS-TABLE:END -->\nafter\n")
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [r.split(" | ")[0] for r in rows] == ["| ae", "| vqvae", "| Autoencoder (MLP, BCE)", "| VAE (MLP)"]
    assert "configs/mnist/vqvae.yaml" in rows[1] and "Machine:" in text
    assert rows[1].split(" | ")[7]  # VQ perplexity filled for the VQ-VAE

    # a second sitting with the same work folder reuses the finished rows (nothing retrained) and the table is the same
    logs = {p: p.stat().st_mtime_ns for p in (tmp_path / "work").rglob("*.log")}
    again = subprocess.run([*command, "--skip-throughput"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("reusing") == 2
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "work").rglob("*.log")} == logs  # no fit, no benchmark
    assert readme.read_text() == text


def test_row_commands_name_data_folders_inside_the_repository_by_their_variable() -> None:
    run_all = load_script(ROOT / "benchmarks" / "run_all.py", "run_all_benchmark")
    root = run_all.ROOT
    args = argparse.Namespace(data_dir=str(root / "data"), cifar_dir=str(root / ".cache" / "cifar"),
                              work_dir=root / "runs")
    command = [sys.executable, "-m", "lightning_ae", "fit", "--config", str(root / "configs/cifar10/ae.yaml"),
               "--data.data_dir", str(root / ".cache" / "cifar"), "--save_pretrained", str(root / "runs" / "model")]
    assert run_all.as_typed(command, args) == ("python -m lightning_ae fit --config configs/cifar10/ae.yaml "
                                               "--data.data_dir $LIGHTNING_AE_CIFAR10 --save_pretrained WORK/model")
