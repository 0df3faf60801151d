"""coordinator/train/sequences.py: a sequence job in one process, chunk by chunk, and its summary."""
from __future__ import annotations

import math

from dni.coordinator.jobs.job import load_job
from dni.coordinator.train.sequences import SequenceModel, train_sequences
from dni.coordinator.train.chunk_feed import batch_for, chunks_of, with_readout_width
from dni.coordinator.data.tasks import CharText, CopyTask



def small_copy(**settings):
    job = load_job("copy", {"iterations": 6, "truncation": 2, "batch_size": 4, **settings})
    return with_readout_width(job, CopyTask())


def test_a_batch_runs_one_chunk_per_truncation_and_predicts_nothing_past_the_sequence():
    job, task = small_copy(), CopyTask()
    model = SequenceModel(job, task)
    batch = batch_for(job, task, 0, 3)  # 7 steps: chunks of 2, 2, 2, 1
    scores = [model.train_chunk(tensors, flags) for tensors, flags in chunks_of(batch, 2)]
    core = model.cores[0]
    assert core.steps == 4 and core.block.prediction is None  # the sequence ended: nothing is predicted beyond it
    assert [int(score[2]) for score in scores] == [0, 0, 8, 4]  # the reproduction's steps are scored, 4 rows each
    assert model.readout.steps == 4


def test_the_summary_has_the_curve_and_the_longest_length_solved_and_follows_the_seed():
    first, second = (train_sequences(small_copy()) for _ in range(2))
    assert [point["batch"] for point in first["curve"]] == list(range(6))
    assert [point["length"] for point in first["curve"]] == [1] * 6  # the curriculum's N, not the steps
    assert first["curve"] == second["curve"] and first["max_length_solved"] == 0
    assert first["mode"] == "sg" and first["truncation"] == 2 and first["task"] == "copy"


def test_learning_solves_a_length_and_the_curriculum_moves_on():
    summary = train_sequences(small_copy(mode="backprop", truncation=3, batch_size=16, iterations=200))
    assert summary["max_length_solved"] >= 1 and summary["curve"][-1]["length"] == summary["max_length_solved"] + 1
    assert summary["curve"][0]["bits_per_step"] > 7.0  # eight coin flips' worth at first


def test_the_character_model_reports_bits_per_character_on_the_held_out_tail(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("the cat sat on the mat. " * 40)
    job = load_job("chars", {"text": str(path), "truncation": 4, "batch_size": 4, "iterations": 40, "text_window": 20})
    summary = train_sequences(job)
    assert "max_length_solved" not in summary
    assert 0 < summary["test_bits_per_char"] < math.log2(CharText(path).input_size)
