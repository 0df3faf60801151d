"""Sequence jobs on workers: recurrent stages on their own processes in every mode that applies, the same
arithmetic as one process in backprop, a failing recurrent stage named, a lost one replaced, and a character
stream resumed with its kept state."""
from __future__ import annotations

import json
import logging
import math
import os
import signal

import pytest
import torch

from dni import resume_job, run_job
from dni.coordinator.jobs.job import load_job
from dni.coordinator.results.folder import RunComplete
from dni.coordinator.train.sequences import train_sequences
from dni.lifetime import alive, children
from tests.e2e.processes import at_first_checkpoint, interrupt, run_cli

pytestmark = pytest.mark.e2e

FAILING_CORES = '''
from dni.workers.stage.recurrent import LSTMCore


class Failing(LSTMCore):
    """An LSTM that, on its 7th training chunk, raises or sends half its outputs."""

    def __init__(self, input_shape, hidden: int, fault: str) -> None:
        super().__init__(input_shape, hidden)
        self.calls, self.fault = 0, fault

    def forward(self, x, state):
        self.calls += self.training
        outputs, state = super().forward(x, state)
        if self.calls == 7 and self.fault == "raise":
            raise RuntimeError("the core broke on chunk 7")
        if self.calls == 7 and self.fault == "shrink":
            return outputs[..., :8], state
        return outputs, state
'''


def chunks_sent(curve: list[dict], truncation: int) -> int:
    """Chunks of T steps in the copy task's batches: 2N + 1 steps each."""
    return sum(math.ceil((2 * point["length"] + 1) / truncation) for point in curve)


@pytest.mark.parametrize("mode", ["backprop", "sg", "no_bprop"])
def test_a_copy_job_runs_its_recurrent_stage_on_a_worker_of_its_own(mode, tmp_path):
    result, workers, _ = run_cli("copy", "--mode", mode, "--iterations", "40", "--truncation", "2", "--threads", "1",
                                 "--results", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.splitlines()[0]).keys() >= {"max_length_solved", "wall_seconds"}
    run = next(tmp_path.iterdir())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "complete" and (summary["task"], summary["mode"], summary["truncation"]) == ("copy", mode, 2)
    assert [point["batch"] for point in summary["curve"]] == list(range(40))
    assert summary["curve"][0]["bits_per_step"] > 7.0, "eight coin flips at first"
    lstm, readout = summary["worker_metrics"]
    chunks = chunks_sent(summary["curve"], 2)
    assert lstm["steps"] == readout["steps"] == chunks, "every chunk ran through both stages"
    assert readout["messages"].get("sent_backward", 0) == (0 if mode == "no_bprop" else chunks)
    assert lstm["messages"].get("received_backward", 0) == (0 if mode == "no_bprop" else chunks)
    assert (lstm["synthesizer_loss"] > 0) == (mode == "sg")
    assert summary["workers"][0]["pid"] != summary["workers"][1]["pid"]
    assert (run / "curve.png").stat().st_size > 10_000
    weights = torch.load(run / "model.pt", weights_only=True)
    assert set(weights) == {"stage0", "stage1"}
    assert any(name.startswith("time_synthesizer.") for name in weights["stage0"]) == (mode == "sg")
    assert workers and not any(alive(pid) for pid in workers)


STACKED = [{"kind": "lstm", "hidden": 16}, {"kind": "gru", "hidden": 12, "synthesizer": {"kind": "mlp", "layers": 0}},
           {"kind": "linear"}]


@pytest.mark.parametrize("stages", [None, STACKED], ids=["lstm", "lstm-gru stacked"])
def test_backprop_on_workers_is_truncated_bptt_in_one_process_step_for_step(stages, tmp_path):
    torch.set_num_threads(1)
    job = load_job("repeat-copy", {"mode": "backprop", "iterations": 30, "truncation": 3, "threads": 1,
                                   "results": str(tmp_path), **({"stages": stages} if stages else {})})
    _, on_workers = run_job(job, show_progress=False)
    in_one = train_sequences(job)
    assert [point["length"] for point in on_workers["curve"]] == [point["length"] for point in in_one["curve"]]
    for mine, theirs in zip(on_workers["curve"], in_one["curve"]):
        assert mine["bits_per_step"] == pytest.approx(theirs["bits_per_step"], rel=1e-5)


def test_stacked_recurrent_stages_each_learn_between_their_neighbours_in_sg(tmp_path):
    job = load_job("repeat-copy", {"iterations": 30, "threads": 1, "results": str(tmp_path), "stages": STACKED})
    _, summary = run_job(job, show_progress=False)
    lstm, gru, readout = summary["worker_metrics"]
    assert lstm["steps"] == gru["steps"] == readout["steps"] > 30
    assert lstm["synthesizer_loss"] > 0 and gru["synthesizer_loss"] > 0, "each learns dL/d(outputs) from the stage after it"
    assert gru["messages"]["sent_backward"] == lstm["messages"]["received_backward"] == lstm["steps"]
    assert summary["curve"][-1]["bits_per_step"] < summary["curve"][0]["bits_per_step"]


@pytest.fixture
def failing_cores(monkeypatch, tmp_path):
    """A plug-in module with a core that raises, importable here and in the workers."""
    (tmp_path / "failing_cores.py").write_text(FAILING_CORES)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))


@pytest.mark.parametrize("fault, stage, names", [
    ("raise", 0, "run failed: stage 0 (failing_cores:Failing) failed: RuntimeError: the core broke on chunk 7"),
    ("shrink", 1, "run failed: stage 1 refused batch 6 from stage 0 and so lost it: x must be float32 (B, T <= 2, 16), "
                  "got float32 [256, 2, 8]"),
])
def test_a_failing_recurrent_stage_ends_the_run_within_seconds_naming_it(fault, stage, names, failing_cores, tmp_path):
    job = tmp_path / "failing.toml"
    job.write_text('task = "copy"\ntruncation = 2\niterations = 100\n\n[[stages]]\nkind = "failing_cores:Failing"\n'
                   f'hidden = 16\nfault = "{fault}"\n\n[[stages]]\nkind = "linear"\n')
    result, workers, seconds = run_cli(str(job), "--results", str(tmp_path / "runs"), "--threads", "1")
    assert result.returncode == 1, result.stderr[-3000:]
    assert names in result.stderr
    assert seconds < 60
    assert workers and not any(alive(pid) for pid in workers), "no process left behind"
    summary = json.loads((next((tmp_path / "runs").iterdir()) / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["failed_stage"] == stage


def test_a_lost_recurrent_worker_is_replaced_and_the_run_finishes(tmp_path, monkeypatch):
    job = load_job("copy", {"iterations": 60, "checkpoint_every": 20, "threads": 1, "results": str(tmp_path)})

    def kill_the_lstm() -> None:
        victim = next(pid for pid, command in children(os.getpid()).items() if "stage0" in command)
        os.kill(victim, signal.SIGKILL)

    at_first_checkpoint(monkeypatch, kill_the_lstm)
    _, summary = run_job(job, show_progress=False)
    assert summary["recoveries"] == 1
    assert [point["batch"] for point in summary["curve"]] == list(range(60)), "batches after the checkpoint ran again"


def test_a_character_stream_resumes_with_the_state_its_stages_kept(tmp_path, caplog, monkeypatch):
    text = tmp_path / "book.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 400)
    job = load_job("chars", {"text": str(text), "iterations": 30, "checkpoint_every": 10, "text_window": 20,
                             "truncation": 5, "threads": 1, "results": str(tmp_path / "runs")})
    with monkeypatch.context() as patch:
        at_first_checkpoint(patch, interrupt)
        with pytest.raises(KeyboardInterrupt):
            run_job(job, show_progress=False)
    run = next((tmp_path / "runs").iterdir())
    checkpointed = json.loads((run / "checkpoints" / "coordinator.json").read_text())["step"]
    assert 0 < checkpointed < 30
    kept = torch.load(run / "checkpoints" / "stage0.pt", weights_only=True)["kept_state"]
    assert [tuple(part.shape) for part in kept] == [(32, 128), (32, 128)] and kept[0].abs().sum() > 0
    with caplog.at_level(logging.INFO, logger="dni.sequences"):
        _, summary = resume_job(run, show_progress=False)
    assert f"resuming at batch {checkpointed}: every stage's kept state restored" in caplog.text
    assert summary["resumed_from_batch"] == checkpointed
    assert [point["batch"] for point in summary["curve"]] == list(range(30))
    assert 0 < summary["test_bits_per_char"] < math.log2(len(set(text.read_text())))
    with pytest.raises(RunComplete, match=r"already finished \(30 batches, \d\.\d{3} bits per character\); nothing to resume"):
        resume_job(run, show_progress=False)


def test_a_time_limit_ends_a_sequence_job_after_whole_batches(tmp_path):
    result, _, seconds = run_cli("copy", "--time-limit", "3", "--iterations", "1000000", "--results", str(tmp_path),
                                 "--threads", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((next(tmp_path.iterdir()) / "summary.json").read_text())
    assert summary["stopped_at_time_limit"] and 0 < summary["batches"] == len(summary["curve"]) < 1_000_000
    assert seconds < 60


def test_dni_run_text_trains_a_character_model_on_the_file(tmp_path):
    text = tmp_path / "book.txt"
    text.write_text("to be or not to be, that is the question. " * 300)
    result, _, _ = run_cli("--text", str(text), "--iterations", "20", "--results", str(tmp_path / "runs"), "--threads", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert 0 < json.loads(result.stdout.splitlines()[0])["test_bits_per_char"] < math.log2(len(set(text.read_text())))
    assert (next((tmp_path / "runs").iterdir()) / "curve.png").is_file()
