"""The GPU acceptance script, dry: its payload is a dataset root, and every part runs on CPU and reports every field.

GPU machines are lent rarely and briefly; this keeps the script working between leases.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dni.coordinator.data.dataset import load_dataset
from tests.conftest import REPO

pytestmark = pytest.mark.e2e

SCRIPT = REPO / "benchmarks" / "gpu" / "run.py"


def test_dry_run_reports_every_part(data_root, tmp_path):
    payload, out = tmp_path / "payload", tmp_path / "out"
    prepare = [sys.executable, str(SCRIPT), "--prepare", str(payload), "--no-wheel", "--data-root", str(data_root)]
    subprocess.run(prepare, check=True, timeout=300)
    dry_run = [sys.executable, str(SCRIPT), "--dry-run", "--payload", str(payload), "--out", str(out), "--work", str(tmp_path / "work")]
    completed = subprocess.run(dry_run, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]

    report = json.loads((out / "gpu.json").read_text())
    assert report["dry_run"] and report["device_name"]
    assert all(part["status"] == "ok" for part in report["parts"].values()), report["parts"]
    assert report["parts"]["tests"]["passed"] >= 1
    mnist = report["parts"]["mnist"]["rows"]
    assert [(row["placement"], row["mode"]) for row in mnist] == [(p, m) for p in ("gpu", "cpu") for m in ("backprop", "sg", "cdni")]
    assert all(row["steps"] == 20 and row["devices"] == ["cpu"] * 3 for row in mnist)
    assert [row["steps"] for row in report["parts"]["cifar"]["rows"]] == [3, 3, 3]
    assert {(stage["job"], stage["stage"]) for stage in report["parts"]["profile"]["stages"]} == {
        ("mnist_fcn", 1), ("cifar10_cnn", 0), ("cifar10_cnn", 1)}
    assert [row["stages"] for row in report["parts"]["scaling"]["rows"]] == [2]
    assert (out / "gpu.png").stat().st_size > 10_000


def test_payload_is_a_dataset_root_holding_the_slice(data_root, tmp_path):
    sys.path.insert(0, str(SCRIPT.parent))
    from prepare import prepare, unpack

    size = prepare(tmp_path, data_root, wheel=False)
    cifar = load_dataset("cifar10", tmp_path, download=False, verify=False)
    full = load_dataset("cifar10", data_root, download=False, verify=False)
    assert (len(cifar.train_y), len(cifar.test_y)) == (10_000, 2_000)
    assert (cifar.train_x == full.train_x[:10_000]).all() and (cifar.test_y == full.test_y[:2_000]).all()
    mnist = load_dataset("mnist", unpack(tmp_path), download=False)
    assert (len(mnist.train_y), len(mnist.test_y)) == (60_000, 10_000)
    assert 40 << 20 < size < 60 << 20
