"""coordinator/results/tensorboard.py: what the writer puts in the event files, read back with TensorBoard's own reader."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import HISTOGRAMS, SCALARS, EventAccumulator

from dni.coordinator.results.tensorboard import TensorBoardLog
from dni.workers.stage.timing import ACTIVITIES, GROUPS
from tests.conftest import small_job


def events(directory: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(directory), size_guidance={SCALARS: 0, HISTOGRAMS: 0})  # 0: keep every event
    accumulator.Reload()
    return accumulator


def points(accumulator: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]


def worker(stage: int, wall: float, time: dict[str, float], staleness: dict[str, int]) -> dict[str, Any]:
    return {"stage": stage, "steps": 100, "wall": wall, "time": time, "staleness": staleness, "messages": {}, "errors": {}}


def record(step: int, test_accuracy: float, workers: list[dict[str, Any]]) -> dict[str, Any]:
    """A metrics record as the trainer writes it; values exact in float32, as TensorBoard stores scalars."""
    return {"eval": step // 100 - 1, "step": step, "epoch": step / 100, "train_accuracy": test_accuracy - 0.125,
            "train_loss": 2.0 / step, "test_accuracy": test_accuracy, "test_loss": 1.0 / step, "elapsed": step / 50,
            "samples_per_second": 1000.0 + step, "workers": workers, "worker_errors": []}


def test_writer_logs_curves_fractions_and_staleness_at_the_training_step(tmp_path):
    job = small_job(tmp_path, tmp_path, tensorboard=str(tmp_path / "tb"))
    log = TensorBoardLog(job, tmp_path / "runs" / "test-sg-20260101-000000")
    log.write(record(100, 0.5, [
        worker(0, 2.0, {"forward": 0.5, "backward": 0.25, "synthesizer": 0.75, "wait_input": 0.25, "transport": 0.125},
               {"0": 3, "2": 5}),
        worker(1, 4.0, {"forward": 1.0, "loop": 0.5}, {}),
    ]))
    log.write(record(200, 0.75, [
        worker(0, 4.0, {"forward": 1.0, "backward": 0.5, "synthesizer": 1.5, "wait_input": 0.5, "transport": 0.25,
                        "control": 0.125}, {"0": 4, "1": 2, "2": 10}),
        worker(1, 8.0, {"forward": 2.0, "loop": 1.0, "wait_gradient": 4.0}, {"0": 7}),
    ]))
    log.close()

    accumulator = events(tmp_path / "tb" / "test-sg-20260101-000000")
    assert points(accumulator, "accuracy/test") == [(100, 0.5), (200, 0.75)]
    assert points(accumulator, "accuracy/train") == [(100, 0.375), (200, 0.625)]
    assert points(accumulator, "loss/test") == [(100, np.float32(0.01)), (200, np.float32(0.005))]
    assert points(accumulator, "loss/train") == [(100, np.float32(0.02)), (200, np.float32(0.01))]
    assert points(accumulator, "throughput/samples_per_second") == [(100, 1100.0), (200, 1200.0)]
    fractions = {f"stage{stage}/fraction/{activity}" for stage in (0, 1) for activity in (*ACTIVITIES, *GROUPS)}
    assert set(accumulator.Tags()["scalars"]) == fractions | {
        "accuracy/train", "accuracy/test", "loss/train", "loss/test", "throughput/samples_per_second"}
    assert points(accumulator, "stage0/fraction/forward") == [(100, 0.25), (200, 0.25)]
    assert points(accumulator, "stage0/fraction/compute") == [(100, 0.75), (200, 0.75)]
    assert points(accumulator, "stage0/fraction/control") == [(100, 0.0), (200, 0.03125)]
    assert points(accumulator, "stage1/fraction/wait_gradient") == [(100, 0.0), (200, 0.5)]
    assert points(accumulator, "stage1/fraction/loop") == [(100, 0.125), (200, 0.125)]

    assert set(accumulator.Tags()["histograms"]) == {"stage0/staleness", "stage1/staleness"}
    stage0 = accumulator.Histograms("stage0/staleness")
    assert [event.step for event in stage0] == [100, 200]
    first, second = (event.histogram_value for event in stage0)
    assert (first.min, first.max, first.num, first.sum, first.sum_squares) == (0, 2, 8, 10, 20)
    assert (list(first.bucket_limit), list(first.bucket)) == ([0.5, 1.5, 2.5], [3, 0, 5])
    assert (second.num, second.sum, list(second.bucket)) == (16, 22, [4, 2, 10])
    [stage1] = accumulator.Histograms("stage1/staleness")  # no staleness counted yet at step 100: nothing logged
    assert (stage1.step, stage1.histogram_value.num, list(stage1.histogram_value.bucket)) == (200, 7, [7])


def test_a_step_that_goes_back_hides_the_abandoned_points(tmp_path):
    """A worker restart rolls the run back to a checkpoint: TensorBoard shows the repeated steps' new values only."""
    job = small_job(tmp_path, tmp_path, tensorboard=str(tmp_path / "tb"))
    log = TensorBoardLog(job, tmp_path / "run")
    for step, accuracy in ((100, 0.5), (200, 0.625), (300, 0.75), (200, 0.25), (300, 0.375)):
        log.write(record(step, accuracy, []))
    log.close()
    assert points(events(tmp_path / "tb" / "run"), "accuracy/test") == [(100, 0.5), (200, 0.25), (300, 0.375)]


def test_without_a_folder_the_writer_does_nothing(tmp_path):
    log = TensorBoardLog(small_job(tmp_path, tmp_path / "runs"), tmp_path / "run")
    log.write(record(100, 0.5, []))
    log.close()
    assert not list(tmp_path.iterdir())


def test_a_graph_logs_every_heads_curves_and_every_edges_synthesizer(tmp_path):
    job = small_job(tmp_path, tmp_path, tensorboard=str(tmp_path / "tb"))
    log = TensorBoardLog(job, tmp_path / "runs" / "graph-sl-20260101-000000")
    left = {**worker(0, 2.0, {"forward": 1.0}, {}), "edges": {"head": {"synthesizer_loss": 0.25, "synthetic_loss": 1.5}}}
    line = {**record(100, 0.5, [left, worker(1, 2.0, {"forward": 1.0}, {})]),
            "heads": {"digit": {"test_accuracy": 0.5}, "parity": {"test_accuracy": 0.75}}}
    log.write(line)
    log.close()
    accumulator = events(tmp_path / "tb" / "graph-sl-20260101-000000")
    assert points(accumulator, "heads/parity/test_accuracy") == [(100, 0.75)]
    assert points(accumulator, "stage0/edge/head/synthetic_loss") == [(100, 1.5)]
    assert points(accumulator, "stage0/edge/head/synthesizer_loss") == [(100, 0.25)]
