"""The README's multi-node launch, run for real: two "nodes" of one process each on localhost (gloo), each started
with the same ``lightning-ae fit`` command and its own ``NODE_RANK``; both end with the same weights."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_on_localhost_end_with_equal_weights(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "lightning_ae", "fit", "--model", "Autoencoder", "--model.latent_dim", "4",
               "--data", "FakeImageDataModule", "--data.image_shape", "[1, 8, 8]", "--data.num_train", "64",
               "--data.val_size", "16", "--data.batch_size", "8", "--trainer.accelerator", "cpu",
               "--trainer.devices", "1", "--trainer.num_nodes", "2", "--trainer.strategy", "ddp",
               "--trainer.max_steps", "5", "--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
               "--trainer.enable_progress_bar", "false", "--trainer.callbacks+=tests.weights_dump.DumpWeights",
               f"--trainer.callbacks.out_dir={tmp_path}"]
    port = str(_free_port())
    nodes = []
    for node_rank in (0, 1):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": port, "NODE_RANK": str(node_rank), "LIGHTNING_AE_DEBUG": "1"}
        nodes.append(subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert [(r["global_rank"], r["node_rank"], r["world_size"]) for r in ranks] == [(0, 0, 2), (1, 1, 2)]
    assert ranks[0]["global_step"] == ranks[1]["global_step"] == 5
    for name, weight in ranks[0]["weights"].items():
        assert torch.equal(weight, ranks[1]["weights"][name]), name
