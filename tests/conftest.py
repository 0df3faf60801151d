"""Shared test setup: real data from the shared datasets folder, small jobs, a clean process table."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from dni.coordinator.job import Job, job_from_table

REPO = Path(__file__).resolve().parent.parent
DATA_ROOT = Path(os.environ.get("DNI_DATA_ROOT", REPO.parent / "shared" / "datasets"))
# What "learned" means for `small_job` in the unlocked modes (chance is 0.1). How far the first
# stage runs ahead of its true gradients is timing, and so is the accuracy after 200-300 steps:
# 0.69-0.78 measured on two shared cores (0.7 failed in CI once).
LEARNED = 0.6


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not (DATA_ROOT / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        pytest.fail(f"MNIST not found under {DATA_ROOT}; set DNI_DATA_ROOT")
    return DATA_ROOT


def mlp_stages(width: int = 64, hidden: int = 128) -> list[dict[str, Any]]:
    synthesizer = {"kind": "mlp", "hidden": hidden, "layers": 2}
    return [
        {"kind": "linear_bn_relu", "features": width, "synthesizer": synthesizer},
        {"kind": "linear_bn_relu", "features": width, "synthesizer": synthesizer},
        {"kind": "linear", "features": 10},
    ]


def small_job(data_root: Path, results: Path, **settings: Any) -> Job:
    """An MNIST job on a slice of the data, quick on two cores."""
    table: dict[str, Any] = {
        "name": "test", "dataset": "mnist", "mode": "sg", "batch_size": 64, "iterations": 200,
        "eval_every": 100, "train_subset": 6400, "test_subset": 1000, "window": 4, "threads": 1,
        "data_root": str(data_root), "results": str(results), "download": False,
        "optimizer": {"name": "adam", "lr": 1e-3}, "stages": mlp_stages(),
    }
    table.update(settings)
    return job_from_table(table)
