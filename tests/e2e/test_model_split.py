"""A model of one's own, split into stages on their own worker processes: in backprop it trains exactly as the
unsplit model under plain autograd; the torchvision ResNet example, cut by measured cost, learns in sg; a bad
split stops `dni run` with exit code 2 before any worker starts."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dni import load_job, run_job, split
from tests.conftest import REPO, small_job
from tests.e2e.test_equivalence import STEPS, adam, reference_batches

pytestmark = pytest.mark.e2e

MODEL = f"{__name__}:mlp"
EXAMPLE = REPO / "examples" / "torchvision_resnet"


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(),
                         nn.Linear(32, 10))


@pytest.fixture
def importable(monkeypatch):
    """This repository (for this module's model) and the example on the path of the workers this process starts."""
    paths = [str(REPO), str(EXAMPLE)]
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")]))


def test_a_split_model_in_backprop_trains_as_the_unsplit_model_under_autograd(importable, data_root, tmp_path):
    job = split(small_job(data_root, tmp_path, mode="backprop", iterations=STEPS, window=1, batch_size=32,
                          train_subset=640, eval_every=STEPS, seed=7), MODEL, split=[2, 5])
    folder, summary = run_job(job, show_progress=False)
    assert len({worker["pid"] for worker in summary["workers"]}) == 3
    assert summary["model_split"] == {"split": [2, 5], "how": "as the job says"}
    batches, _ = reference_batches(job, data_root)
    torch.set_num_threads(1)
    torch.manual_seed(job.seed)
    whole = mlp()
    optimizer = adam(whole.parameters(), job.optimizer.lr)
    for x, y in batches:
        optimizer.zero_grad()
        F.cross_entropy(whole(x), y, reduction="sum").backward()
        optimizer.step()
    saved = torch.load(folder.path / "model.pt")
    for index, (start, _) in enumerate([(0, 2), (2, 5), (5, 7)]):
        for name, value in saved[f"stage{index}"].items():
            if name.startswith("module."):
                child, rest = name.removeprefix("module.").split(".", 1)
                torch.testing.assert_close(value, whole.state_dict()[f"{start + int(child)}.{rest}"], rtol=1e-5, atol=1e-6)


def test_the_resnet_example_cut_by_measured_cost_learns_in_sg(importable, data_root, tmp_path):
    job = load_job(str(EXAMPLE / "resnet_cifar10.toml"), {
        "iterations": 150, "batch_size": 32, "train_subset": 4800, "test_subset": 500, "eval_every": 150,
        "verify_data": False, "download": False, "threads": 1, "data_root": str(data_root), "results": str(tmp_path)})
    assert (job.model, job.balance) == ("small_resnet:make", 3)
    folder, summary = run_job(job, show_progress=False)
    assert summary["test_accuracy"] > 0.2, f"{summary['test_accuracy']:.3f} (chance is 0.1)"
    assert len(summary["model_split"]["split"]) == 2
    assert summary["model_split"]["how"].startswith(f"split {summary['model_split']['split']} from measured child times")
    assert folder.stored_job().split == tuple(summary["model_split"]["split"])  # a resumed run keeps the cut


def test_a_bad_split_stops_dni_run_with_exit_code_2(importable, tmp_path):
    job_file = tmp_path / "bad.toml"
    job_file.write_text(f'dataset = "mnist"\nmodel = "{MODEL}"\nsplit = [5, 2]\n')
    done = subprocess.run([sys.executable, "-m", "dni", "run", str(job_file)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert f"model '{MODEL}': split [5, 2] must be strictly increasing" in done.stderr
