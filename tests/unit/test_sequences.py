"""coordinator/sequences.py: one-process training on a sequence task, chunk by chunk, and its summary."""
from __future__ import annotations

import math

import torch

from dni.coordinator.sequences import SequenceModel, SequenceSettings, train_sequences
from dni.coordinator.tasks import CharText, CopyTask
from dni.spec import Mode

SMALL = SequenceSettings(mode=Mode.SG, truncation=2, hidden=8, batch_size=4, batches=6, lr=1e-2)


def test_a_batch_runs_one_chunk_per_truncation_and_restarts_the_state_only_at_its_start():
    task = CopyTask(bits=3)
    model = SequenceModel(task, SMALL)
    batch = task.batch(3, 4, torch.Generator().manual_seed(0))  # 7 steps: chunks of 2, 2, 2, 1
    error = model.train_batch(batch, truncation=2)
    assert model.recurrent.steps == 4 and model.recurrent.prediction is None  # the sequence ended: nothing predicted
    assert 0 < error < 10


def test_the_summary_has_the_curve_and_the_longest_length_solved_and_follows_the_seed():
    first, second = (train_sequences(CopyTask(bits=3), SMALL) for _ in range(2))
    assert [point["step"] for point in first["curve"]] == list(range(6))
    assert first["curve"] == second["curve"] and first["max_length_solved"] == 0
    assert first["mode"] == "sg" and first["truncation"] == 2 and first["task"] == "copy"


def test_learning_solves_a_length_and_the_curriculum_moves_on():
    summary = train_sequences(CopyTask(bits=3), SequenceSettings(mode=Mode.BACKPROP, truncation=3, hidden=16,
                                                                 batch_size=16, batches=150, lr=1e-2))
    assert summary["max_length_solved"] >= 1 and summary["curve"][-1]["length"] == summary["max_length_solved"] + 1
    assert summary["curve"][0]["bits_per_step"] > 1.0  # three coin flips' worth at first


def test_the_character_model_reports_bits_per_character_on_the_held_out_tail(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("the cat sat on the mat. " * 40)
    text = CharText(path)
    summary = train_sequences(text, SequenceSettings(mode=Mode.SG, truncation=4, hidden=16, batch_size=4, batches=40,
                                                     lr=1e-2, text_window=20))
    assert "max_length_solved" not in summary
    assert 0 < summary["test_bits_per_char"] < math.log2(text.input_size)
