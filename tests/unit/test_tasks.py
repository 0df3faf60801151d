"""coordinator/data/tasks.py: the copy, repeat-copy and character tasks' sequences, their bits, and the curriculum."""
from __future__ import annotations

import math

import pytest
import torch

from dni.coordinator.data.tasks import CharText, CopyTask, Curriculum, RepeatCopyTask, bits_per_step, open_task
from dni.workers.stage.losses import resolve_loss
from dni.errors import DataError


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_copy_reads_the_vectors_then_a_delimiter_and_scores_only_their_reproduction():
    batch = CopyTask(bits=4).batch(3, 2, generator())
    assert batch.inputs.shape == (2, 7, 5) and batch.targets.shape == (2, 7, 4) and batch.mask.shape == (2, 7)
    torch.testing.assert_close(batch.targets[:, 4:], batch.inputs[:, :3, :4])
    assert batch.inputs[:, 3].tolist() == [[0, 0, 0, 0, 1]] * 2 and not batch.inputs[:, 4:].any()
    assert batch.mask[0].tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert batch.start and batch.ends


def test_copy_batches_follow_the_seed():
    assert torch.equal(CopyTask().batch(5, 3, generator(1)).inputs, CopyTask().batch(5, 3, generator(1)).inputs)
    assert not torch.equal(CopyTask().batch(5, 3, generator(1)).inputs, CopyTask().batch(5, 3, generator(2)).inputs)


def test_repeat_copy_carries_the_count_and_ends_with_the_end_bit():
    task = RepeatCopyTask(bits=3, max_repeats=4)
    batch = task.batch(2, 2, generator(3))
    repeats = round(float(batch.inputs[0, 2, 4]) * 4)
    assert 1 <= repeats <= 4 and batch.inputs.shape[1] == 2 + 1 + 2 * repeats + 1
    data = batch.inputs[:, :2, :3]
    torch.testing.assert_close(batch.targets[:, 3:-1, :3], data.repeat(1, repeats, 1))
    assert batch.targets[:, -1].tolist() == [[0, 0, 0, 1]] * 2 and not batch.targets[:, :-1, 3].any()
    assert batch.mask[0, :3].sum() == 0 and batch.mask[0, 3:].all()


def test_text_streams_continue_across_batches_and_restart_at_the_end(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("abcdefghij" * 10)
    text = CharText(path, held_out=0.1)
    assert text.input_size == 10 and len(text.test) == 10
    first, second = text.batch(4, 2, generator()), text.batch(4, 2, generator())
    assert first.start and not second.start and not first.ends
    assert torch.equal(first.targets[:, -1], second.inputs[:, 0].argmax(-1))  # the stream goes on where it stopped
    assert torch.equal(first.inputs.argmax(-1)[:, 1:], first.targets[:, :-1])
    starts = [text.batch(4, 2, generator()).start for _ in range(10)]  # each stream has 45 characters: 11 windows
    assert starts == [False] * 9 + [True]  # then back to the streams' beginnings: a new sequence


def test_text_bits_are_the_cross_entropy_in_bits(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("abcd" * 20)
    text = CharText(path)
    losses = resolve_loss(text.loss).per_example(torch.zeros(3, 4), torch.tensor([0, 1, 2]))  # nats per step
    torch.testing.assert_close(losses, torch.full((3,), math.log(4)))
    assert bits_per_step(float(losses.sum()), 3) == pytest.approx(math.log2(4))


def test_a_text_too_short_is_refused(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("ab")
    with pytest.raises(DataError, match="too little text"):
        CharText(path)
    with pytest.raises(DataError, match="cannot read"):
        CharText(tmp_path / "missing.txt")


def test_the_curriculum_grows_the_length_once_the_windowed_error_is_below_the_threshold():
    curriculum = Curriculum(window=3)
    assert not any(curriculum.record(error) for error in (1.0, 0.1, 0.1))  # mean 0.4
    assert not curriculum.record(0.3)  # the last three: 0.167
    assert curriculum.record(0.0) and (curriculum.level, curriculum.solved) == (2, 1)  # 0.133
    assert not curriculum.record(0.0)  # a fresh window at the new length


def test_the_held_out_tail_is_scored_as_rows_of_streams_each_from_its_start(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("abcdefghij" * 10)  # a tail of 10 characters
    text = CharText(path)
    batch = text.evaluation_batch(limit=9, rows=2)
    codes = text.test[:10]
    assert batch.start and batch.ends and batch.inputs.shape == (2, 4, text.input_size)
    assert batch.targets.tolist() == [codes[1:5].tolist(), codes[5:9].tolist()]
    assert batch.inputs.argmax(-1).tolist() == [codes[0:4].tolist(), codes[4:8].tolist()]
    assert batch.mask.sum() == 8


def test_a_task_opens_by_its_job_file_name_with_the_loss_its_readout_needs(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("abcdefghij" * 10)
    tasks = [open_task("copy"), open_task("repeat-copy"), open_task("chars", str(path))]
    assert [(task.name, task.loss, task.output_size) for task in tasks] == [
        ("copy", "bits", 8), ("repeat-copy", "bits", 9), ("chars", "cross_entropy", 10)]
