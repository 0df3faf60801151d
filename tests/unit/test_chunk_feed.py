"""coordinator/chunk_feed.py: what a sequence job sends and keeps, without workers: its chunks and their
flags, its batches from (seed, index), its tallies, its stages' assignments and their check, its checkpointed state."""
from __future__ import annotations

import pytest
import torch

from dni.coordinator.job import job_from_table, load_job
from dni.coordinator.chunk_feed import (STAND_IN, BatchTally, SequenceState, batch_for, check_sequence_stages, chunks_of,
                                        sequence_assignments, with_readout_width)
from dni.coordinator.tasks import CopyTask, Curriculum, SequenceBatch
from dni.errors import ConfigError


def test_a_batch_goes_out_as_chunks_of_at_most_t_steps_flagged_where_its_sequence_starts_and_ends():
    batch = SequenceBatch(torch.zeros(2, 7, 3), torch.zeros(2, 7, 2), torch.ones(2, 7))
    chunks = list(chunks_of(batch, 3))
    assert [tensors["x"].shape[1] for tensors, _ in chunks] == [3, 3, 1]
    assert [flags for _, flags in chunks] == [{"start": True, "last": False}, {"start": False, "last": False},
                                             {"start": False, "last": True}]
    assert {tensors["x"].dtype.name for tensors, _ in chunks} == {"float32"} and chunks[1][0]["x"].flags.c_contiguous
    stream = SequenceBatch(torch.zeros(2, 4, 3), torch.zeros(2, 4, dtype=torch.int64), torch.ones(2, 4), start=False, ends=False)
    assert [flags for _, flags in chunks_of(stream, 2)] == [{"start": False, "last": False}] * 2


def test_a_batch_comes_from_the_seed_and_its_index_alone():
    job, task = load_job("copy"), CopyTask()
    first, again, other = batch_for(job, task, 5, 2), batch_for(job, task, 5, 2), batch_for(job, task, 6, 2)
    assert torch.equal(first.inputs, again.inputs) and not torch.equal(first.inputs, other.inputs)
    assert first.inputs.shape == (32, 5, 9), "N = 2 vectors, a delimiter, their reproduction"


def test_a_batch_tally_is_complete_once_every_chunk_is_back():
    tally = BatchTally(index=4, length=2, chunks=2)
    tally.add({"loss_sum": 3.0, "count": 0, "correct": 0})
    assert not tally.complete
    tally.add({"loss_sum": 1.0, "count": 8, "correct": 2})
    assert tally.complete and tally.bits_per_step == 0.5


def test_every_stage_is_told_the_truncation_the_tasks_loss_and_its_neighbours():
    job = with_readout_width(load_job("copy", {"discount": 0.5}), CopyTask())
    assert job.stages[-1].params == {"features": 8}, "the readout is as wide as the task's output"
    first, readout = sequence_assignments(job, CopyTask(), "j", "ipc://c", [STAND_IN] * 2, [(9,), (64,)], None)
    assert (first.truncation, first.discount, first.loss, first.num_classes, first.input_shape) == (3, 0.5, "bits", 8, (9,))
    assert (first.upstream, first.downstream, readout.upstream, readout.downstream) == (
        None, STAND_IN.forward, STAND_IN.backward, None)
    assert (readout.input_shape, readout.spec.kind) == ((64,), "linear")


def test_a_readout_that_does_not_fit_the_task_is_refused_before_anything_starts():
    job = job_from_table({"name": "x", "task": "copy", "truncation": 2,
                          "stages": [{"kind": "gru", "hidden": 8}, {"kind": "linear", "features": 3}]})
    with pytest.raises(ConfigError, match=r"the readout \(linear\) outputs \[3\] per step, but copy needs 8"):
        check_sequence_stages(job, CopyTask())
    check_sequence_stages(with_readout_width(load_job("copy"), CopyTask()), CopyTask())


def test_the_runs_own_state_survives_a_checkpoint():
    state = SequenceState([{"batch": 0, "length": 1, "bits_per_step": 0.1}], Curriculum(level=3, solved=2, recent=[0.2]), 17)
    again = SequenceState.from_json(state.as_json())
    assert (again.curve, again.text_position) == (state.curve, 17)
    assert (again.curriculum.level, again.curriculum.solved, again.curriculum.recent) == (3, 2, [0.2])
    assert SequenceState.from_json({}).curriculum.level == 1, "a run without a checkpoint starts at length 1"
