"""coordinator/train/trainer.py: the Trainer's main loop against a fake pipeline that answers as three workers would.

The fake (the one stand-in for our own components in the unit tests) takes the Trainer's calls, keeps a log of
them, and returns a TRAIN_RESULT for every training batch and an EVAL_RESULT for every evaluation batch, in the
order sent. Its "workers" predict class 0, so every accuracy is known from the labels. `depth` is how many more
batches must be sent before a result is ready to a poll (a pipeline holding batches in flight); a blocking
receive always gets the oldest result. The data are random uint8 tensors.
"""
from __future__ import annotations

import json
import types
from collections import deque
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import pytest
import torch

import dni.coordinator.train.trainer as trainer_module
from dni.coordinator.train.batch_feed import BatchFeed
from dni.coordinator.data.dataset import Dataset, train_batches
from dni.coordinator.train.feeds import Tensors
from dni.coordinator.data.dataset import test_batches as evaluation_batches  # not collected as a test
from dni.coordinator.pools.pipeline import Pipeline
from dni.errors import PipelineError, StageFailed, WorkerLost
from dni.coordinator.results.folder import RunFolder, read_metrics
from dni.coordinator.train.recovery import RecoveryLimit
from dni.coordinator.train.segments import SEGMENTS
from dni.coordinator.train.trainer import STALL_SECONDS, Trainer
from dni.protocol import Endpoints, Kind, Message, Outboxes
from tests.conftest import small_job

JOB_ID = "unit-job"
STAGES = 3
BATCH = 8
EVAL_BATCH = 10


def endpoints(stage: int, generation: int = 0) -> Endpoints:
    base = f"ipc:///fake/g{generation}/stage{stage}"
    return Endpoints(f"{base}.control", f"{base}.forward", f"{base}.backward")


def predicted_zero(labels: torch.Tensor) -> dict[str, Any]:
    """What the fake's last stage reports for a batch: it always predicts class 0, at a loss of 1 per example."""
    return {"loss_sum": float(len(labels)), "correct": int((labels == 0).sum()), "count": len(labels)}


class FakePipeline:
    """The Pipeline's methods the Trainer calls, answered as three workers would; every call is logged."""

    def __init__(self, depth: int = 0, clock: Optional[list[float]] = None) -> None:
        self.job_id = JOB_ID
        self.endpoints = [endpoints(stage) for stage in range(STAGES)]
        self.stages = STAGES
        self.depth = depth
        self.clock = clock  # [seconds]: each training batch sent takes one
        self.results: deque[tuple[int, Message]] = deque()  # (sends so far when it was queued, result)
        self.sends = 0
        self.status = [{"steps": 0} for _ in range(STAGES)]
        self.refused_by_stage = [0] * STAGES
        self.log: list[tuple] = []  # ("forward", step) / ("eval", eval index, batch) / ("request", stage, command, forwarded)
        self.requests: list[dict[str, Any]] = []  # every request in full, with what was in flight when it came
        self.configs: list[dict[str, Any]] = []
        self.outstanding = self.max_outstanding = 0
        self.forwarded = 0  # training batches sent, all generations
        self.lose_from_batch: Optional[int] = None  # training batches from this one on vanish at stage 1
        self.lose_eval_batch: Optional[int] = None
        self.die_at: list[int] = []  # a receive after this many training batches sent raises WorkerLost for stage 1
        self.interrupt_at: Optional[int] = None
        self.gone_stage: Optional[int] = None
        self.reconnected: list[tuple[int, Endpoints]] = []
        self.rejoins_lost: list[int] = []  # a rejoin of this stage raises WorkerLost (the replacement died), once each
        self.pauses: list[float] = []
        self.silences_forgotten = 0
        self.link = Outboxes()  # the feed's outbox, whose link stats the summary reports
        self.edge_shapes: dict[int, Any] = {}  # a stage's configure reply names these per-edge shapes

    def where(self, stage: int) -> str:
        return f"stage {stage}"

    # -- control -------------------------------------------------------------------------------------------

    def request(self, stage: int, command: str, meta: Optional[dict[str, Any]] = None, timeout: float = 60.0,
                stall_timeout: Optional[float] = None) -> Message:
        meta = meta or {}
        self.log.append(("request", stage, command, self.forwarded))
        self.requests.append({"stage": stage, "command": command, "meta": meta, "in_flight": len(self.results)})
        reply: dict[str, Any] = {"ok": True}
        tensors: dict[str, np.ndarray] = {}
        if command == "configure":
            self.configs.append(meta["config"])
            features = meta["config"]["spec"]["params"]["features"]
            reply.update(output_shape=[features], pid=1000 + stage, device="cpu", takes_labels=stage == STAGES - 1,
                         edge_shapes=self.edge_shapes.get(stage, {}))
        elif command == "checkpoint":
            Path(meta["path"]).write_text(f"stage {stage} after {self.forwarded} batches")  # as save_checkpoint would
            reply["path"] = meta["path"]
        elif command == "metrics":
            reply["metrics"] = {"stage": stage, "steps": self.status[stage]["steps"], "errors": {"refused": stage}}
        elif command == "state":
            tensors = {"weight": np.full(2, stage, np.float32)}
        return Message(Kind.REPLY, self.job_id, meta=reply, tensors=tensors)

    def request_all(self, command: str, meta: Optional[dict[str, Any]] = None, timeout: float = 60.0,
                    stall_timeout: Optional[float] = None) -> list[Message]:
        return [self.request(stage, command, meta, timeout, stall_timeout) for stage in range(STAGES)]

    def rejoin(self, stage: int, new: Endpoints, timeout: float, replaceable: bool = True) -> None:
        if self.rejoins_lost:
            raise WorkerLost(self.rejoins_lost.pop(0), "the replacement died before it answered")
        self.reconnected.append((stage, new))
        self.endpoints[stage] = new

    def keep_alive(self) -> None:
        pass

    def pause(self, seconds: float) -> None:
        self.pauses.append(seconds)

    def forget_silence(self) -> None:
        self.silences_forgotten += 1
        self.status = [{"steps": 0} for _ in range(STAGES)]

    def gone(self, grace: float = 3.0) -> Optional[int]:
        return self.gone_stage

    def feed_over_bound(self) -> bool:
        return False

    # -- data ----------------------------------------------------------------------------------------------

    def send_parts(self, kind: Kind, batch: int, parts: list[tuple[int, dict[str, np.ndarray]]],
                   meta: Optional[dict[str, Any]] = None) -> None:
        """The data goes to the first stage, the labels straight to the last: the batch as the stages see it."""
        arrays = dict(parts)
        assert set(arrays) == {0, STAGES - 1} and set(arrays[0]) == {"x"} and set(arrays[STAGES - 1]) == {"labels"}
        self.send_tensors(kind, batch, {"x": arrays[0]["x"], "labels": arrays[STAGES - 1]["labels"]}, meta)

    def send_tensors(self, kind: Kind, batch: int, tensors: dict[str, np.ndarray], meta: Optional[dict[str, Any]] = None) -> None:
        assert tensors["x"].dtype == (np.uint8 if self.configs[0]["pixels"] else np.float32) and tensors["labels"].dtype == np.int64
        labels = torch.from_numpy(tensors["labels"])
        self.sends += 1
        if kind is Kind.FORWARD:
            self.log.append(("forward", batch))
            self.forwarded += 1
            if self.clock is not None:
                self.clock[0] += 1.0
            lost = self.lose_from_batch is not None and batch >= self.lose_from_batch
            self.status[0]["steps"] += 1
            if not lost:
                for stage in range(1, STAGES):
                    self.status[stage]["steps"] += 1
                self._queue(Message(Kind.TRAIN_RESULT, self.job_id, batch, batch, STAGES - 1, predicted_zero(labels)))
                self.outstanding += 1
                self.max_outstanding = max(self.max_outstanding, self.outstanding)
        else:
            self.log.append(("eval", meta["eval"], batch))
            if batch != self.lose_eval_batch:
                self._queue(Message(Kind.EVAL_RESULT, self.job_id, batch, batch, STAGES - 1, {**meta, **predicted_zero(labels)}))

    def _queue(self, message: Message) -> None:
        self.results.append((self.sends, message))

    def receive(self, timeout: float) -> Optional[Message]:
        if self.die_at and self.forwarded >= self.die_at[0]:
            self.die_at.pop(0)
            raise WorkerLost(1, "stage 1 (pid 1001) exited with code -9")
        if self.interrupt_at is not None and self.forwarded >= self.interrupt_at:
            self.interrupt_at = None
            raise KeyboardInterrupt
        while self.results and self.results[0][1].job != self.job_id:
            self.results.popleft()  # a stale message of an earlier attempt: the real pipeline refuses it
        if not self.results or (timeout == 0 and self.sends - self.results[0][0] < self.depth):
            return None
        message = self.results.popleft()[1]
        if message.kind is Kind.TRAIN_RESULT:
            self.outstanding -= 1
        return message

    def idle_for(self) -> float:
        """Asked only when a receive came back empty: with nothing more to come, every stage is idle."""
        return 0.0 if self.results else STALL_SECONDS + 1

    receive_until_stalled = Pipeline.receive_until_stalled  # the real rule, over this fake's receive and idle_for


def tiny_data(train: int = 80, test: int = 20) -> Dataset:
    generator = torch.Generator().manual_seed(0)
    return Dataset("mnist", torch.randint(0, 256, (train, 1, 4, 4), dtype=torch.uint8, generator=generator),
                   torch.randint(0, 10, (train,), generator=generator),
                   torch.randint(0, 256, (test, 1, 4, 4), dtype=torch.uint8, generator=generator),
                   torch.randint(0, 10, (test,), generator=generator))


class Restarts:
    """A pool whose lost workers are replaced (started anew, or waited for when restarted elsewhere):
    each replacement listens at a new address."""

    rejoin_seconds = 5.0
    spawns = True

    def __init__(self) -> None:
        self.stages: list[int] = []

    def replace(self, loss: WorkerLost, keep_alive: Any = None) -> Endpoints:
        self.stages.append(loss.stage)
        return endpoints(loss.stage, len(self.stages))


class Irreplaceable:
    """A pool whose lost workers nothing can replace."""

    rejoin_seconds = 0.0
    spawns = False

    def replace(self, loss: WorkerLost, keep_alive: Any = None) -> Endpoints:
        raise loss


def make_trainer(tmp_path: Path, pipeline: FakePipeline, pool: Optional[Restarts] = None,
                 data: Optional[Dataset] = None, **settings: Any) -> Trainer:
    table = {"batch_size": BATCH, "eval_batch_size": EVAL_BATCH, "iterations": 10, "eval_every": 5, "window": 1,
             "checkpoint_every": 0, **settings}
    job = small_job(tmp_path / "no-data", tmp_path / "runs", **table)
    return Trainer(job, JOB_ID, BatchFeed(job, data or tiny_data()), pipeline, RunFolder.create(job), "ipc:///fake/coordinator",
                   show_progress=False, pool=pool or Irreplaceable())


def run(tmp_path: Path, pipeline: FakePipeline, pool: Optional[Restarts] = None, data: Optional[Dataset] = None,
        **settings: Any) -> tuple[Trainer, dict[str, Any]]:
    trainer = make_trainer(tmp_path, pipeline, pool, data, **settings)
    return trainer, trainer.run()


def zero_accuracy(labels: torch.Tensor) -> float:
    return float((labels == 0).sum()) / len(labels)


# -- configuration -----------------------------------------------------------------------------------------------


def neighbours(config: dict[str, Any]) -> tuple[list, list]:
    """A configured stage's sockets at the other ends of its input and output edges."""
    return [edge["address"] for edge in config["inputs"]], [edge["address"] for edge in config["outputs"]]


def test_every_stage_is_configured_in_order_with_its_neighbours_and_the_previous_output_shape(tmp_path):
    pipeline = FakePipeline()
    trainer, _ = run(tmp_path, pipeline)
    first, middle, last = pipeline.configs
    assert [config["index"] for config in pipeline.configs] == [0, 1, 2]
    assert [config["input_shape"] for config in pipeline.configs] == [[1, 4, 4], [64], [64]]
    assert neighbours(first) == ([None], [endpoints(1).forward])
    assert neighbours(middle) == ([endpoints(0).backward], [endpoints(2).forward])
    assert neighbours(last) == ([endpoints(1).backward], [])
    assert {(c["job"], c["coordinator"], c["window"], c["restore"]) for c in pipeline.configs} == {
        (JOB_ID, "ipc:///fake/coordinator", 1, None)}
    assert [worker["pid"] for worker in trainer.workers] == [1000, 1001, 1002]
    assert [config["pixels"] for config in pipeline.configs] == [{"divide": True, "mean": [], "std": []}, None, None]


def test_a_stages_shape_per_edge_reaches_its_consumer_and_one_for_edges_it_lacks_is_refused(tmp_path):
    pipeline = FakePipeline()
    pipeline.edge_shapes = {0: {"stage1": [64]}}  # a chain names its stages so
    run(tmp_path / "named", pipeline, iterations=2, eval_every=2)
    assert pipeline.configs[1]["inputs"][0]["shape"] == [64]
    wrong = FakePipeline()
    wrong.edge_shapes = {0: {"head": [64]}}
    with pytest.raises(PipelineError, match=r"stage 0 reports shapes for edges \['head'\] where it has \['stage1'\]"):
        run(tmp_path / "wrong", wrong, iterations=2, eval_every=2)


def test_uint8_examples_travel_as_pixels_and_float_examples_as_floats(tmp_path):
    pixels = FakePipeline()
    run(tmp_path / "pixels", pixels, iterations=4, eval_every=4)  # the fake checks each batch's dtype against stage 0's config
    floats = FakePipeline()
    data = tiny_data()
    run(tmp_path / "floats", floats, None, replace(data, train_x=data.train_x.float(), test_x=data.test_x.float()),
        iterations=4, eval_every=4)
    assert pixels.configs[0]["pixels"] is not None and floats.configs[0]["pixels"] is None
    assert pixels.sends == floats.sends > 4, "training and evaluation batches were sent"


# -- the credit window -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("window", [1, 4])
def test_no_more_than_window_plus_stages_training_batches_are_ever_outstanding(tmp_path, window):
    pipeline = FakePipeline(depth=1000)  # nothing is ever ready early: the Trainer runs until its credit is spent
    _, summary = run(tmp_path, pipeline, iterations=30, eval_every=30, window=window)
    assert pipeline.max_outstanding == window + STAGES
    assert summary["steps"] == 30 and pipeline.outstanding == 0


def test_a_fast_pipeline_is_fed_one_batch_at_a_time(tmp_path):
    pipeline = FakePipeline(depth=0)
    run(tmp_path, pipeline, iterations=30, eval_every=30, window=4)
    assert pipeline.max_outstanding == 1


# -- evaluation slots --------------------------------------------------------------------------------------------


def test_evaluations_are_slipped_in_every_eval_every_steps_and_after_the_last(tmp_path):
    pipeline = FakePipeline()
    run(tmp_path, pipeline, iterations=10, eval_every=4)
    sends = [entry for entry in pipeline.log if entry[0] != "request"]
    evaluation = [[("eval", index, 2 * index), ("eval", index, 2 * index + 1)] for index in range(3)]
    assert sends == [*(("forward", step) for step in range(4)), *evaluation[0],
                     *(("forward", step) for step in range(4, 8)), *evaluation[1],
                     ("forward", 8), ("forward", 9), *evaluation[2]]


def test_each_evaluation_is_recorded_in_metrics_jsonl_with_its_step_and_accuracies(tmp_path):
    data = tiny_data()
    pipeline = FakePipeline()
    trainer, summary = run(tmp_path, pipeline, data=data, iterations=10, eval_every=4)
    records = read_metrics(trainer.folder.path)
    test_accuracy = zero_accuracy(torch.cat([labels for _, labels in evaluation_batches(data, EVAL_BATCH)]))
    labels = [batch_labels for _, _, batch_labels in train_batches(data, BATCH, 0, 10)]
    # a batch sent just before an evaluation reports after it starts: it counts in the next line
    assert [r["train_accuracy"] for r in records] == [zero_accuracy(torch.cat(labels[0:3])),
                                                      zero_accuracy(torch.cat(labels[3:7])), zero_accuracy(torch.cat(labels[7:9]))]
    assert [(r["eval"], r["step"], r["epoch"], r["test_accuracy"], r["test_loss"], r["train_loss"]) for r in records] == [
        (0, 4, 0.4, test_accuracy, 1.0, 1.0), (1, 8, 0.8, test_accuracy, 1.0, 1.0), (2, 10, 1.0, test_accuracy, 1.0, 1.0)]
    assert [worker["stage"] for worker in records[0]["workers"]] == [0, 1, 2]
    assert summary["test_accuracy"] == test_accuracy and summary["steps"] == 10
    assert summary["worker_errors"] == [0, 1, 2]


def test_a_result_for_an_evaluation_that_is_not_running_is_ignored(tmp_path, caplog):
    pipeline = FakePipeline(depth=1000)
    trainer = make_trainer(tmp_path, pipeline)
    pipeline._queue(Message(Kind.EVAL_RESULT, JOB_ID, 0, 0, 2, {"eval": 7, **predicted_zero(torch.zeros(2, dtype=torch.int64))}))
    trainer.run()
    assert "ignored a result for evaluation 7, which is not running" in caplog.text
    assert [record["eval"] for record in read_metrics(trainer.folder.path)] == [0, 1]


# -- checkpoints -------------------------------------------------------------------------------------------------


def test_checkpoints_flush_every_stage_then_save_each_at_checkpoint_every_steps(tmp_path):
    data = tiny_data()
    pipeline = FakePipeline(depth=1000)
    trainer, _ = run(tmp_path, pipeline, data=data, iterations=10, eval_every=5, checkpoint_every=4)
    requests = [entry[1:] for entry in pipeline.log if entry[0] == "request" and entry[2] in ("flush", "checkpoint")]
    cut = [*((stage, "flush") for stage in range(STAGES)), *((stage, "checkpoint") for stage in range(STAGES))]
    assert requests == [(stage, command, forwarded) for forwarded in (4, 8, 10) for stage, command in cut]
    # the last cut, after the run: its step, both evaluations written, and the batches that reported after the
    # last evaluation began (8 and 9: the cut at step 8 had drained the rest)
    last_two = torch.cat([labels for _, _, labels in train_batches(data, BATCH, 0, 10)][8:])
    assert json.loads((trainer.folder.path / "checkpoints" / "coordinator.json").read_text()) == {
        "step": 10, "evaluations": 2, "tally": {"loss_sum": 16.0, "correct": int((last_two == 0).sum()), "count": 16},
        "sequence": {}}


def test_a_checkpoint_waits_until_nothing_is_in_flight(tmp_path):
    pipeline = FakePipeline(depth=1000)
    run(tmp_path, pipeline, iterations=12, eval_every=3, checkpoint_every=6, window=4)
    flushes = [request for request in pipeline.requests if request["command"] == "flush"]
    assert [request["in_flight"] for request in flushes] == [0] * 6


def test_stages_save_into_the_next_cut_which_moves_into_place_once_committed(tmp_path):
    pipeline = FakePipeline()
    trainer, _ = run(tmp_path, pipeline)
    checkpoints = trainer.folder.path / "checkpoints"
    paths = [request["meta"]["path"] for request in pipeline.requests if request["command"] == "checkpoint"]
    assert paths == [str(checkpoints / "next" / f"stage{stage}.pt") for stage in range(STAGES)]
    assert sorted(path.name for path in checkpoints.iterdir()) == ["coordinator.json", "stage0.pt", "stage1.pt", "stage2.pt"]
    assert (checkpoints / "stage2.pt").read_text() == "stage 2 after 10 batches"


# -- recovery ----------------------------------------------------------------------------------------------------


def test_a_lost_worker_is_replaced_and_every_stage_resumes_from_the_last_checkpoint(tmp_path):
    pipeline = FakePipeline()
    pipeline.die_at = [7]
    restarts = Restarts()
    trainer, summary = run(tmp_path, pipeline, restarts, iterations=12, eval_every=2, checkpoint_every=4)
    assert restarts.stages == [1] and pipeline.reconnected == [(1, endpoints(1, 1))]
    assert (summary["recoveries"], summary["resent_batches"], summary["job_id"]) == (1, 3, f"{JOB_ID}-r1")
    assert pipeline.job_id == f"{JOB_ID}-r1" and pipeline.silences_forgotten == 1
    forwarded = [entry[1] for entry in pipeline.log if entry[0] == "forward"]
    assert forwarded == [*range(7), *range(4, 12)], "the batches after the checkpoint at step 4 are sent again"
    again = pipeline.configs[STAGES:]
    assert [(c["job"], c["restore"]) for c in again] == [
        (f"{JOB_ID}-r1", str(trainer.folder.path / "checkpoints" / f"stage{stage}.pt")) for stage in range(STAGES)]


def test_recovery_rolls_the_records_back_to_the_checkpoint(tmp_path):
    pipeline = FakePipeline()
    pipeline.die_at = [7]  # after the evaluation at step 6 was recorded
    trainer, summary = run(tmp_path, pipeline, Restarts(), iterations=12, eval_every=2, checkpoint_every=4)
    records = read_metrics(trainer.folder.path)
    assert [(r["eval"], r["step"]) for r in records] == [(index, 2 * (index + 1)) for index in range(6)]
    assert summary["steps"] == 12


def test_stale_results_of_the_attempt_before_a_replacement_are_not_counted(tmp_path):
    pipeline = FakePipeline(depth=1000)
    pipeline.die_at = [6]
    trainer, summary = run(tmp_path, pipeline, Restarts(), iterations=12, eval_every=12, checkpoint_every=4, window=4)
    assert trainer.done == trainer.sent == 12
    assert summary["resent_batches"] == 6 - 4


def test_without_a_way_to_replace_a_lost_worker_the_run_fails(tmp_path):
    pipeline = FakePipeline()
    pipeline.die_at = [3]
    with pytest.raises(WorkerLost, match="stage 1 \\(pid 1001\\) exited"):
        run(tmp_path, pipeline, pool=None)


def test_a_worker_that_keeps_dying_ends_the_run_once_max_recoveries_are_spent_within_the_window(tmp_path):
    pipeline = FakePipeline()
    pipeline.die_at = [3] * 4
    restarts = Restarts()
    trainer = make_trainer(tmp_path, pipeline, restarts, max_recoveries=3, recovery_window=600)
    with pytest.raises(RecoveryLimit, match=r"4 workers lost within 10 minutes: giving up \(max_recoveries = 3 within "
                                            r"recovery_window = 600 s; raise max_recoveries .*the last: stage 1 \(pid 1001\)"):
        trainer.run()
    assert trainer.recoveries == 3 and restarts.stages == [1] * 3


def test_more_losses_than_the_old_cap_of_three_are_all_recovered_by_default(tmp_path):
    pipeline = FakePipeline()
    pipeline.die_at = [3, 5, 6, 7, 9, 10, 11, 11]
    trainer, summary = run(tmp_path, pipeline, Restarts(), iterations=12, eval_every=4, checkpoint_every=2)
    assert (summary["recoveries"], summary["steps"]) == (8, 12)
    assert [record["step"] for record in read_metrics(trainer.folder.path)] == [4, 8, 12]


def test_a_replacement_lost_during_its_recovery_is_replaced_again_after_a_backoff(tmp_path):
    pipeline = FakePipeline()
    pipeline.die_at = [5]
    pipeline.rejoins_lost = [1, 1]  # the first two replacements die before they answer
    restarts = Restarts()
    trainer, summary = run(tmp_path, pipeline, restarts, iterations=12, eval_every=4, checkpoint_every=4)
    assert restarts.stages == [1, 1, 1] and pipeline.reconnected == [(1, endpoints(1, 3))]
    assert pipeline.pauses == [0.0, 0.5, 1.0], "no wait before the first try, then doubling"
    assert (summary["recoveries"], summary["resent_batches"]) == (3, 1), "every try counts; the re-sent batch once"
    assert pipeline.job_id == f"{JOB_ID}-r3"


def test_the_summary_counts_every_segment_of_a_resumed_run(tmp_path):
    pipeline = FakePipeline()
    pipeline.die_at = [5]
    first, _ = run(tmp_path, pipeline, Restarts(), iterations=8, eval_every=4, checkpoint_every=2)
    segments = json.loads((first.folder.path / SEGMENTS).read_text())
    assert [(s["from_step"], s["to_step"], s["recoveries"], s["resent_batches"], s["status"]) for s in segments] == [
        (0, 8, 1, 1, "complete")]
    position = json.loads((first.folder.path / "checkpoints" / "coordinator.json").read_text())
    position["step"], position["evaluations"] = 4, 1  # as if stopped at step 4
    (first.folder.path / "checkpoints" / "coordinator.json").write_text(json.dumps(position))
    second = FakePipeline()
    second.die_at = [2, 3]
    trainer = Trainer(first.job, JOB_ID, BatchFeed(first.job, tiny_data()), second, first.folder, "ipc:///fake/coordinator", show_progress=False,
                      pool=Restarts())
    summary = trainer.run()
    assert [(s["from_step"], s["recoveries"], s["status"]) for s in summary["segments"]] == [(0, 1, "complete"),
                                                                                            (4, 2, "complete")]
    assert (summary["recoveries"], summary["resent_batches"]) == (3, 1 + summary["segments"][1]["resent_batches"])
    assert summary["total_wall_seconds"] >= summary["wall_seconds"] > 0


# -- stopping ----------------------------------------------------------------------------------------------------


def test_the_time_limit_ends_training_with_a_final_evaluation(tmp_path, monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(trainer_module, "time",
                        types.SimpleNamespace(monotonic=lambda: clock[0], process_time=lambda: 0.0, time=lambda: 0.0))
    pipeline = FakePipeline(clock=clock)
    trainer, summary = run(tmp_path, pipeline, iterations=1000, eval_every=4, time_limit=5)
    assert [entry[1] for entry in pipeline.log if entry[0] == "forward"] == [0, 1, 2, 3, 4]
    assert [record["step"] for record in read_metrics(trainer.folder.path)] == [4, 5]
    assert (summary["stopped_at_time_limit"], summary["steps"]) == (True, 5)


def test_without_a_time_limit_the_run_trains_every_step(tmp_path, monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(trainer_module, "time",
                        types.SimpleNamespace(monotonic=lambda: clock[0], process_time=lambda: 0.0, time=lambda: 0.0))
    _, summary = run(tmp_path, FakePipeline(clock=clock), iterations=20, eval_every=10)
    assert (summary["stopped_at_time_limit"], summary["steps"]) == (False, 20)


def test_an_evaluation_as_accurate_as_stop_at_accuracy_ends_training_there(tmp_path):
    data = tiny_data()
    accuracy = zero_accuracy(data.test_y)
    assert accuracy > 0  # the fixed seed's test labels hold zeros, which the fake always predicts
    trainer, summary = run(tmp_path, FakePipeline(), data=data, iterations=1000, eval_every=4, stop_at_accuracy=accuracy)
    assert [record["step"] for record in read_metrics(trainer.folder.path)] == [4]
    assert (summary["stopped_at_accuracy"], summary["stopped_at_time_limit"], summary["steps"]) == (True, False, 4)


def test_evaluations_short_of_stop_at_accuracy_train_every_step(tmp_path):
    data = tiny_data()
    _, summary = run(tmp_path, FakePipeline(), data=data, iterations=12, eval_every=4,
                     stop_at_accuracy=zero_accuracy(data.test_y) + 0.01)
    assert (summary["stopped_at_accuracy"], summary["steps"]) == (False, 12)


def test_a_lost_training_batch_stalls_the_run_with_an_error_naming_the_stage(tmp_path):
    pipeline = FakePipeline()
    pipeline.lose_from_batch = 3
    with pytest.raises(StageFailed) as error:
        run(tmp_path, pipeline, iterations=10, window=1)
    assert error.value.stage == 1
    assert str(error.value) == (f"batch 3 never came back and every stage has been idle for {STALL_SECONDS + 1:.0f}s: "
                                "stage 1 trained on 3 of the 7 batches sent, so it was lost at stage 1")


def test_a_lost_evaluation_batch_stalls_the_run_with_an_error_naming_the_last_stage(tmp_path):
    pipeline = FakePipeline()
    pipeline.lose_eval_batch = 1
    with pytest.raises(StageFailed) as error:
        run(tmp_path, pipeline, iterations=10, eval_every=5)
    assert error.value.stage == STAGES - 1
    assert str(error.value) == (f"evaluation 0 got 1 of 2 batch results and every stage has been idle for "
                                f"{STALL_SECONDS + 1:.0f}s: the rest were lost")


def test_an_interrupt_writes_a_checkpoint_at_the_current_step_first(tmp_path):
    pipeline = FakePipeline()
    pipeline.interrupt_at = 6
    trainer = make_trainer(tmp_path, pipeline, iterations=10, checkpoint_every=4)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    position = json.loads((trainer.folder.path / "checkpoints" / "coordinator.json").read_text())
    assert position["step"] == 6
    assert [entry[3] for entry in pipeline.log if entry[:1] == ("request",) and entry[2] == "flush"] == [4] * 3 + [6] * 3


def test_an_interrupt_with_a_stage_gone_keeps_the_last_periodic_checkpoint(tmp_path):
    pipeline = FakePipeline()
    pipeline.interrupt_at = 6
    pipeline.gone_stage = 2
    trainer = make_trainer(tmp_path, pipeline, iterations=10, checkpoint_every=4)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    assert json.loads((trainer.folder.path / "checkpoints" / "coordinator.json").read_text())["step"] == 4
    assert [entry[3] for entry in pipeline.log if entry[:1] == ("request",) and entry[2] == "flush"] == [4] * 3


class HalvedFeed(BatchFeed):
    """Each batch sent as two messages, as a sequence job sends a batch of sequences as its chunks."""

    def steps(self, start: int) -> Iterator[list[Tensors]]:
        for [(tensors, meta)] in super().steps(start):
            yield [({name: array[:BATCH // 2] for name, array in tensors.items()}, meta),
                   ({name: array[BATCH // 2:] for name, array in tensors.items()}, meta)]


def halved_trainer(tmp_path: Path, pipeline: FakePipeline) -> Trainer:
    job = small_job(tmp_path / "no-data", tmp_path / "runs", batch_size=BATCH, eval_batch_size=EVAL_BATCH, iterations=10,
                    eval_every=5, window=1, checkpoint_every=0)
    return Trainer(job, JOB_ID, HalvedFeed(job, tiny_data()), pipeline, RunFolder.create(job), "ipc:///fake/coordinator",
                   show_progress=False, pool=Irreplaceable())


def test_an_interrupt_between_steps_of_several_messages_writes_a_checkpoint_there(tmp_path):
    pipeline = FakePipeline(depth=1000)
    pipeline.interrupt_at = 4  # once the second step is out whole
    trainer = halved_trainer(tmp_path, pipeline)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    assert json.loads((trainer.folder.path / "checkpoints" / "coordinator.json").read_text())["step"] == 2


def test_an_interrupt_in_the_middle_of_a_step_keeps_the_last_checkpoint(tmp_path, caplog):
    pipeline = FakePipeline(depth=1000)
    pipeline.interrupt_at = 5  # the third step's first message out, its second waiting for credit
    trainer = halved_trainer(tmp_path, pipeline)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    assert not (trainer.folder.path / "checkpoints" / "coordinator.json").exists()
    assert [entry for entry in pipeline.log if entry[:1] == ("request",) and entry[2] == "flush"] == []
    assert ("interrupted in the middle of step 2, which a checkpoint would split; --resume continues from step 0, "
            "the last checkpoint") in caplog.text


# -- the summary -------------------------------------------------------------------------------------------------


def test_the_finished_run_saves_every_stage_state_and_summarises(tmp_path):
    pipeline = FakePipeline()
    trainer, summary = run(tmp_path, pipeline, iterations=10, eval_every=5)
    state = torch.load(trainer.folder.path / "model.pt")
    assert sorted(state) == ["stage0", "stage1", "stage2"]
    assert state["stage2"]["weight"].tolist() == [2.0, 2.0]
    assert (summary["job_id"], summary["steps"], summary["epochs"], summary["batch_size"]) == (JOB_ID, 10, 1.0, BATCH)
    assert (summary["recoveries"], summary["resent_batches"], summary["resumed_from_step"]) == (0, 0, 0)
    assert [metrics["steps"] for metrics in summary["worker_metrics"]] == [10, 10, 10]


def test_a_run_resumed_from_a_checkpoint_starts_there_and_keeps_the_records_before_it(tmp_path):
    pipeline = FakePipeline()
    trainer = make_trainer(tmp_path, pipeline, iterations=10, eval_every=2)
    trainer.folder.rewrite_metrics([{"eval": 0, "step": 2, "test_accuracy": 0.5}, {"eval": 1, "step": 4, "test_accuracy": 0.5},
                                    {"eval": 2, "step": 6, "test_accuracy": 0.5}])
    trainer.checkpoints.record(trainer_module.Position(4, 2, {"loss_sum": 8.0, "correct": 1, "count": 8}))
    summary = trainer.run()
    assert [entry[1] for entry in pipeline.log if entry[0] == "forward"] == list(range(4, 10))
    assert {config["restore"] is not None for config in pipeline.configs} == {True}
    assert [record["step"] for record in read_metrics(trainer.folder.path)] == [2, 4, 6, 8, 10]
    assert summary["resumed_from_step"] == 4


def test_a_recovery_hit_by_the_loss_of_another_stage_brings_both_back(tmp_path):
    pipeline = FakePipeline()
    pipeline.die_at = [5]
    pipeline.rejoins_lost = [2]  # while stage 1's replacement is awaited, stage 2's worker dies
    restarts = Restarts()
    run(tmp_path, pipeline, restarts, iterations=12, eval_every=4, checkpoint_every=4)
    assert restarts.stages == [1, 1, 2]
    assert pipeline.reconnected == [(1, endpoints(1, 2)), (2, endpoints(2, 3))]
