"""Graphs of stages on real workers: the three examples train in every mode, and backprop is plain autograd's.

Each example (examples/two_towers, two_heads, skip_connection) runs here as a narrower network on a slice of MNIST.
In `backprop` with a window of one batch, the weights the workers end with must be bit-identical (`torch.equal`)
to those of plain autograd on the same graph in this process after several steps: the joins, the sums of a
fan-out's gradients, the heads' weighted losses and the Adam steps all round the same way.
"""
from __future__ import annotations

import os
import signal
import time
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from dni import resume_job, run_job
from dni.coordinator.data.dataset import load_dataset, train_batches
from dni.coordinator.jobs.job import Job, job_from_table
from dni.coordinator.results.folder import read_metrics
from dni.coordinator.train.routes import head_labels
from dni.errors import PipelineError, RunInterrupted
from dni.lifetime import alive, children
from dni.spec import Mode
from dni.workers.build.builder import build_stages
from tests.e2e.processes import at_first_checkpoint, interrupt, run_cli
from tests.e2e.test_faults import BROKEN_STAGES, broken_stages  # noqa: F401 (a fixture)

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
GRAPHS = {"two_towers": "two_towers/two_towers.toml", "two_heads": "two_heads/two_heads.toml",
          "skip_connection": "skip_connection/skip_connection.toml"}
STEPS = 5


@pytest.fixture(autouse=True)
def parity_labels(monkeypatch):
    """The two-heads example's labels function, importable as its README says (PYTHONPATH=examples/two_heads)."""
    monkeypatch.syspath_prepend(str(EXAMPLES / "two_heads"))


def example_job(name: str, data_root: Path, results: Path, **settings: Any) -> Job:
    """An example's graph with narrower stages and synthesizers, on a slice of MNIST."""
    table = tomllib.loads((EXAMPLES / GRAPHS[name]).read_text())
    for stage in table["stages"]:
        if stage["kind"] == "linear_bn_relu":
            stage["features"] = 32
        if "synthesizer" in stage:
            stage["synthesizer"] = {"kind": "mlp", "hidden": 64, "layers": 2}
    table.update({"name": name, "data_root": str(data_root), "results": str(results), "download": False, "threads": 1,
                  "batch_size": 32, "train_subset": 640, "test_subset": 200, "iterations": STEPS, "eval_every": STEPS,
                  **settings})
    return job_from_table(table)


def autograd(job: Job, batches: list, input_shape) -> list:
    """The job's graph as one network trained by plain autograd, one Adam over every stage as the stages run it."""
    torch.set_num_threads(1)
    built = build_stages(job.stages, input_shape=input_shape, mode=Mode.BACKPROP, num_classes=10, seed=job.seed)
    topology, modules = job.topology, [stage.module for stage in built]
    optimizer = torch.optim.Adam([p for module in modules for p in module.parameters()], lr=job.optimizer.lr, fused=True)
    for x, labels in batches:
        outputs = {-1: x}
        for index in topology.order():
            inputs = [outputs[source] for source in topology.inputs[index]]
            joined = inputs[0] if len(inputs) == 1 else (
                inputs[0] + inputs[1] if job.stages[index].join == "sum" else torch.cat(inputs, dim=1))
            outputs[index] = modules[index](joined)
        total = 0
        for head in topology.heads:
            head_y = torch.from_numpy(head_labels(job, head)(labels.numpy()))
            loss = F.cross_entropy(outputs[head], head_y, reduction="none").sum()
            weight = job.stages[head].loss_weight
            total = total + (loss * weight if weight != 1.0 else loss)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    return modules


@pytest.mark.parametrize("name", list(GRAPHS))
def test_backprop_on_a_graph_of_workers_is_plain_autograd_to_the_bit(name, data_root, tmp_path):
    job = example_job(name, data_root, tmp_path, mode="backprop", window=1)
    folder, summary = run_job(job, show_progress=False)
    data = load_dataset("mnist", data_root, download=False).subset(job.train_subset, job.test_subset)
    batches = [(x, y) for _, x, y in train_batches(data, job.batch_size, job.seed, job.iterations)]
    modules = autograd(job, batches, data.input_shape)
    untrained = autograd(job, [], data.input_shape)
    assert any(not torch.equal(a, b) for module, start in zip(modules, untrained)
               for a, b in zip(module.parameters(), start.parameters())), "the reference did not train"
    saved = torch.load(folder.path / "model.pt")
    for index, module in enumerate(modules):
        for key, value in module.state_dict().items():
            assert torch.equal(saved[f"stage{index}"][f"module.{key}"], value), f"{job.topology.describe(index)} {key}"
    assert summary["steps"] == STEPS


def trained(name: str, mode: str, data_root: Path, tmp_path: Path) -> dict[str, Any]:
    job = example_job(name, data_root, tmp_path, mode=mode, iterations=100, eval_every=100,
                      optimizer={"name": "adam", "lr": 1e-3})
    _, summary = run_job(job, show_progress=False)
    assert summary["steps"] == 100
    return summary


# At 100 steps of 32 examples the narrow examples reach 0.51-0.74 in sg and cdni (chance: 0.10).
@pytest.mark.parametrize("mode", ["sg", "cdni"])
@pytest.mark.parametrize("name", list(GRAPHS))
def test_every_example_learns_on_workers_with_synthetic_gradients(name, mode, data_root, tmp_path):
    assert trained(name, mode, data_root, tmp_path)["test_accuracy"] > 0.45


@pytest.mark.parametrize("name", list(GRAPHS))
def test_every_edge_reports_its_synthetic_loss(name, data_root, tmp_path):
    summary = trained(name, "sl", data_root, tmp_path)
    edges = {(metrics["stage"], edge): values["synthetic_loss"] for metrics in summary["worker_metrics"]
             for edge, values in metrics["edges"].items()}
    producers = sum(len(metrics["edges"]) > 0 for metrics in summary["worker_metrics"])
    assert producers == len(summary["worker_metrics"]) - (2 if name == "two_heads" else 1)
    assert edges and all(loss > 0 for loss in edges.values()), edges


# no_bprop trains the heads only, on what the untrained stages make: 0.125-0.265 here, where chance is 0.10 and
# this run is deterministic (no synthesizer, no window).
@pytest.mark.parametrize("name", list(GRAPHS))
def test_without_backprop_only_the_heads_learn(name, data_root, tmp_path):
    assert trained(name, "no_bprop", data_root, tmp_path)["test_accuracy"] > 0.11


def test_a_killed_worker_of_a_graph_is_replaced_and_the_run_finishes(data_root, tmp_path, monkeypatch):
    job = example_job("two_towers", data_root, tmp_path, mode="sg", iterations=60, eval_every=30, checkpoint_every=20)

    def kill_right() -> None:
        victim = next(pid for pid, command in children(os.getpid()).items() if "stage1" in command)
        os.kill(victim, signal.SIGKILL)

    at_first_checkpoint(monkeypatch, kill_right)
    folder, summary = run_job(job, show_progress=False)
    assert summary["recoveries"] == 1 and summary["resent_batches"] > 0 and summary["steps"] == 60
    assert [record["step"] for record in read_metrics(folder.path)] == [30, 60]
    assert not any(alive(worker["pid"]) for worker in summary["workers"])


def test_an_interrupted_graph_resumes_from_its_checkpoint_with_every_heads_tally(data_root, tmp_path, monkeypatch):
    job = example_job("two_heads", data_root, tmp_path, mode="cdni", iterations=60, eval_every=30, checkpoint_every=20,
                      optimizer={"name": "adam", "lr": 1e-3})
    with monkeypatch.context() as patch:
        at_first_checkpoint(patch, interrupt)
        with pytest.raises(RunInterrupted):
            run_job(job, show_progress=False)
    run = next(tmp_path.iterdir())
    folder, summary = resume_job(run, show_progress=False)
    records = read_metrics(run)
    assert [record["step"] for record in records] == [30, 60] and summary["resumed_from_step"] == 20
    assert set(records[-1]["heads"]) == {"digit", "parity"} and records[-1]["heads"]["digit"]["test_accuracy"] > 0.3


def test_a_failing_stage_of_a_graph_ends_the_run_naming_it(broken_stages, data_root, tmp_path):
    job = example_job("two_towers", data_root, tmp_path, iterations=100, checkpoint_every=0)
    right = replace(job.stages[1], kind="broken_stages:Faulty", params={"features": 32, "fault": "raise"})
    started = time.monotonic()
    with pytest.raises(PipelineError, match=r"stage 1 \('right'\) \(broken_stages:Faulty\) failed: RuntimeError: boom"):
        run_job(replace(job, stages=(job.stages[0], right, job.stages[2])), show_progress=False)
    assert time.monotonic() - started < 60
    assert not any(alive(pid) for pid in children(os.getpid())), "no worker left behind"


def test_a_graph_that_does_not_hold_exits_2_naming_the_stage_before_any_worker(data_root, tmp_path):
    table = (EXAMPLES / GRAPHS["two_towers"]).read_text().replace('inputs = ["left", "right"]', 'inputs = ["left", "rigth"]')
    (tmp_path / "typo.toml").write_text(table)
    result, workers, _ = run_cli(str(tmp_path / "typo.toml"), "--data-root", str(data_root))
    assert result.returncode == 2 and not workers
    assert "stage 'head' takes input 'rigth', but no stage is named so (known: data, left, right, head)" in result.stderr
    shapes = (EXAMPLES / GRAPHS["skip_connection"]).read_text().replace('join = "sum"', 'join = "sum"\ncolumns = [0, 1]') \
        .replace("features = 256\nsynthesizer = { kind = \"mlp\", hidden = 1024, layers = 2 }\n\n[[stages]]\nname = \"head\"",
                 "features = 128\nsynthesizer = { kind = \"mlp\", hidden = 1024, layers = 2 }\n\n[[stages]]\nname = \"head\"")
    (tmp_path / "shapes.toml").write_text(shapes)
    result, workers, _ = run_cli(str(tmp_path / "shapes.toml"), "--data-root", str(data_root), "--no-verify-data")
    assert result.returncode == 2 and not workers
    assert "stage 3 ('head'): inputs of shapes [128] and [256] do not join by sum (it needs one shape)" in result.stderr
