"""coordinator/train/chunk_feed.py: what a sequence job sends and keeps, without workers: its chunks and their
flags, its batches from (seed, index), its tallies, its stages' assignments and their check, its checkpointed state,
and the ChunkFeed a trainer asks for each step's chunks, the curriculum, the text's final evaluation and a summary."""
from __future__ import annotations

import math

import pytest
import torch

from dni.coordinator.jobs.job import job_from_table, load_job
from dni.coordinator.jobs.assignments import stage_assignment
from dni.coordinator.train.chunk_feed import (BatchTally, ChunkFeed, SequenceState, batch_for, check_sequence_stages, chunks_of,
                                        with_readout_width)
from dni.coordinator.train.feeds import Shown, Timing
from dni.coordinator.data.tasks import CharText, CopyTask, Curriculum, SequenceBatch
from dni.errors import ConfigError
from dni.protocol import Endpoints, Kind, Message

ENDPOINTS = [Endpoints(f"ipc://s{stage}.control", f"ipc://s{stage}.forward", f"ipc://s{stage}.backward") for stage in range(2)]


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
    tally.add({"loss_sum": 3.0 * math.log(2), "count": 0, "correct": 0})  # a readout's loss comes in nats
    assert not tally.complete
    tally.add({"loss_sum": 1.0 * math.log(2), "count": 8, "correct": 2})
    assert tally.complete and tally.bits_per_step == 0.5


def test_every_stage_is_told_the_truncation_the_tasks_loss_and_its_neighbours():
    job = with_readout_width(load_job("copy", {"discount": 0.5}), CopyTask())
    assert job.stages[-1].params == {"features": 8}, "the readout is as wide as the task's output"
    feed = ChunkFeed(job, CopyTask())
    first, readout = (stage_assignment(job, index, ENDPOINTS, {index - 1: shape}, "ipc://c", None, "j", num_classes=feed.num_classes,
                                       loss=feed.loss, pixels=feed.pixels) for index, shape in enumerate([(9,), (64,)]))
    assert (first.truncation, first.discount, first.loss, first.num_classes, first.input_shape) == (3, 0.5, "bits", 8, (9,))
    assert [[edge.address for edge in edges] for edges in (first.inputs, first.outputs, readout.inputs, readout.outputs)] \
        == [[None], [ENDPOINTS[1].forward], [ENDPOINTS[0].backward], []]
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


def copy_feed(**overrides: object) -> ChunkFeed:
    task = CopyTask()
    return ChunkFeed(with_readout_width(load_job("copy", {"iterations": 4, **overrides}), task), task)


def chunk_result(kind: Kind, chunk: int, bits: float, scored: int, **meta: object) -> Message:
    """A readout's result of `bits` over `scored` steps (its loss comes in nats)."""
    return Message(kind, "job", chunk, chunk, 1, {"loss_sum": bits * math.log(2), "correct": 0, "count": scored, **meta})


def test_a_copy_batch_is_one_step_of_chunks_at_the_curriculums_length_made_after_the_last_is_back():
    feed = copy_feed()
    assert feed.waits_for_results and (feed.input_shape, feed.num_classes, feed.loss) == ((9,), 8, "bits")
    steps = feed.steps(0)
    assert [flags for _, flags in next(steps)] == [{"start": True, "last": True}], "length 1: 3 steps, one chunk of T = 3"
    feed.state.curriculum.level = 2
    assert len(next(steps)) == 2, "length 2: 5 steps, two chunks"
    assert (feed.owner, feed.chunks, [(t.index, t.length, t.chunks) for t in feed.batches.values()]) == (
        {0: 0, 1: 1, 2: 1}, 3, [(0, 1, 1), (1, 2, 2)])


def test_a_batch_is_tallied_once_its_last_chunk_is_back_and_moves_the_curriculum():
    feed = copy_feed()
    steps = feed.steps(0)
    feed.state.curriculum.level = 2
    next(steps)
    assert feed.trained(chunk_result(Kind.TRAIN_RESULT, 0, 3.0, 0)) is None
    assert feed.trained(chunk_result(Kind.TRAIN_RESULT, 1, 1.0, 8)) == Shown(1, None, "length   2")
    assert feed.state.curve == [{"batch": 0, "length": 2, "bits_per_step": 0.5}]
    assert feed.state.curriculum.recent == [0.5] and not feed.batches and not feed.owner


def test_a_checkpoint_keeps_the_chunks_sent_and_the_runs_state_which_a_restore_brings_back():
    feed = copy_feed()
    feed.state = SequenceState([{"batch": 0, "length": 1, "bits_per_step": 0.1}], Curriculum(level=3, recent=[0.2]))
    position = feed.position(1, 5)
    assert (position.step, position.evaluations, position.tally) == (1, 0, {"chunks": 5})
    again = copy_feed()
    again.restore(position, Lines())
    assert (again.sent_by(position), again.chunks, again.state.curve) == (5, 5, feed.state.curve)
    assert again.state.curriculum.level == 3
    assert len(next(again.steps(1))) == 3 and again.owner == {5: 1, 6: 1, 7: 1}, \
        "length 3: 7 steps, three chunks, numbered on from the checkpoint's"


def test_a_copy_run_summarises_its_longest_length_solved_and_has_no_evaluation():
    feed = copy_feed()
    feed.state.curriculum.solved = 4
    assert (feed.final_evaluations(), feed.evaluations(4, 4), feed.awaited(), feed.accurate_enough()) == ([], [], None, False)
    summary = feed.summary(Timing(steps=4, first_step=2, wall=2.0, trained_samples=0, first_result=None, last_result=0.0))
    assert (summary["max_length_solved"], summary["batches_per_second"], summary["resumed_from_batch"]) == (4, 1.0, 2)
    assert (summary["task"], summary["batches"], summary["truncation"]) == ("copy", 4, 3) and "test_bits_per_char" not in summary


def test_the_text_flows_on_and_is_scored_at_the_end_in_evaluation_chunks(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("abcab" * 200)
    text = CharText(path)
    job = with_readout_width(load_job("chars", {"text": str(path), "iterations": 2, "truncation": 5, "text_window": 10,
                                                "batch_size": 2, "eval_characters": 40}), text)
    feed = ChunkFeed(job, text)
    assert not feed.waits_for_results
    next(feed.steps(0))
    assert feed.state.text_position == 10 == text.position
    final = feed.final_evaluations()
    assert [(message.number, message.meta) for message in final] == [
        (0, {"start": True, "last": False, "eval": 0}), (1, {"start": False, "last": False, "eval": 0}),
        (2, {"start": False, "last": False, "eval": 0}), (3, {"start": False, "last": True, "eval": 0})]
    feed.evaluated(chunk_result(Kind.EVAL_RESULT, 0, 6.0, 10, eval=0), Lines())
    assert feed.awaited() == "the text's evaluation got 1 of 4 chunk results"
    for number in range(1, 4):
        feed.evaluated(chunk_result(Kind.EVAL_RESULT, number, 2.0, 10, eval=0), Lines())
    assert feed.awaited() is None
    summary = feed.summary(Timing(steps=2, first_step=0, wall=1.0, trained_samples=0, first_result=None, last_result=0.0))
    assert summary["test_bits_per_char"] == 12.0 / 40 and "max_length_solved" not in summary


class Lines:
    """A trainer's metrics lines, which a sequence job never writes."""

    def record(self, fields: dict[str, object]) -> dict[str, object]:
        raise AssertionError("a sequence job writes no metrics lines")

    def metrics_until(self, evaluations: int) -> list[dict[str, object]]:
        raise AssertionError("a sequence job keeps no metrics lines")
