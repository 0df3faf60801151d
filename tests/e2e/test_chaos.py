"""Chaos: a run whose workers are lost again and again (killed, frozen for good, killed while being replaced,
frozen in the middle of a checkpoint) notices every fault, finishes as if nothing happened, and leaves no
process behind. benchmarks/chaos/ runs the same at length."""
from __future__ import annotations

import json
import sys
from collections import Counter

import pytest

from dni.bench.chaos import notices, plan, run_folder, run_with_faults, unnoticed
from dni.lifetime import alive
from tests.conftest import LEARNED

pytestmark = pytest.mark.e2e

FAULTS = {"kill": 5, "stop": 1, "kill_replacement": 1, "stop_at_checkpoint": 1}
# Each fault comes 3-5 s after the coordinator answered the one before (its replacement worker started): about
# 60 s for all of them after the first checkpoint (a frozen worker is noticed after the 10 s heartbeat timeout),
# inside the run's 80 s of training; the whole test takes about 100 s on two cores.
DELAYS = (3.0, 5.0)
TIME_LIMIT = 80
HEARTBEAT_TIMEOUT = 10.0
NOTICED_WITHIN = HEARTBEAT_TIMEOUT + 10.0  # a frozen worker's silence, and a loaded machine's lateness


def chaos_job(data_root) -> str:
    """`small_job`'s model and data (3 stages of width 64, 6400 examples), trained for TIME_LIMIT seconds."""
    stage = 'kind = "linear_bn_relu"\nfeatures = 64\nsynthesizer = { kind = "mlp", hidden = 128, layers = 2 }\n'
    return f'''
dataset = "mnist"
mode = "sg"
batch_size = 64
iterations = 1000000
time_limit = {TIME_LIMIT}
eval_every = 500
checkpoint_every = 25
train_subset = 6400
test_subset = 1000
window = 4
threads = 1
data_root = "{data_root}"
download = false

[optimizer]
name = "adam"
lr = 1e-3

[[stages]]
{stage}
[[stages]]
{stage}
[[stages]]
kind = "linear"
features = 10
'''


def test_a_run_survives_repeated_worker_faults_noticing_each(data_root, tmp_path):
    job = tmp_path / "chaos.toml"
    job.write_text(chaos_job(data_root))
    results = tmp_path / "runs"
    command = [sys.executable, "-m", "dni", "run", str(job), "--results", str(results), "--no-progress"]
    outcome = run_with_faults(command, results, plan(7, FAULTS, *DELAYS), tmp_path / "run.log", timeout=150.0)

    assert outcome.exit_code == 0, outcome.log[-5000:]
    assert Counter(hit.kind for hit in outcome.hits) == FAULTS, "every fault was made before the run ended"
    run = run_folder(results)
    assert run is not None
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["stopped_at_time_limit"]
    assert summary["test_accuracy"] > LEARNED
    assert summary["recoveries"] >= len(outcome.hits)
    late = unnoticed([hit.at for hit in outcome.hits], notices(outcome.log))
    noticed = [seconds for seconds in late if seconds is not None]
    assert len(noticed) == len(late), f"a fault was never noticed: {list(zip(outcome.hits, late))}"
    assert max(noticed) < NOTICED_WITHIN, list(zip(outcome.hits, late))
    assert outcome.leftover == [], "every frozen worker ended with its run"
    assert outcome.workers and not any(alive(pid) for pid in outcome.workers), "no worker left behind"
