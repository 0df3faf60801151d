"""coordinator/jobs/cuts.py: a job's model keys become one model_slice stage per cut, checked against the model's
children with errors that name the model, or (`cut`, or `stages = N` of any other module than an nn.Sequential)
one model_piece stage per part of the traced model, a graph; balanced cuts make the slowest stage as fast as it
can be."""
from __future__ import annotations

from itertools import combinations
from typing import Any

import pytest

from dni.coordinator.jobs.cuts import balanced_cuts, model_table, segments
from dni.coordinator.jobs.job import job_as_table, job_from_table
from dni.errors import ConfigError
from dni.workers.build.model_piece import MODEL_PIECE
from dni.workers.build.model_slice import MODEL_SLICE

MODEL = "tests.unit.test_model_slice:make"  # seven children
SYNTH = {"kind": "mlp", "hidden": 8, "layers": 1}


def table(**keys: Any) -> dict[str, Any]:
    return {"name": "t", "dataset": "mnist", "seed": 2, "model": MODEL, **keys}


def test_a_split_makes_one_slice_stage_per_cut_with_the_shared_synthesizer_except_the_last():
    stages, fields = model_table(table(split=[2, 5], synthesizer=SYNTH))
    assert fields == {"model": MODEL, "split": (2, 5), "balance": 0}
    assert [stage["kind"] for stage in stages["stages"]] == [MODEL_SLICE] * 3
    assert [(stage["start"], stage["end"], stage["seed"]) for stage in stages["stages"]] == [(0, 2, 2), (2, 5, 2), (5, 7, 2)]
    assert [stage["synthesizer"] for stage in stages["stages"]] == [SYNTH, SYNTH, {}]
    assert "model" not in stages and "synthesizer" not in stages


def test_stages_n_starts_even_in_children_and_is_left_to_balance():
    stages, fields = model_table(table(stages=3, synthesizers=[SYNTH, {"kind": "mlp", "hidden": 4}]))
    assert fields == {"model": MODEL, "split": (2, 4), "balance": 3}  # until measured: about as many children each
    assert [stage["synthesizer"] for stage in stages["stages"]] == [SYNTH, {"kind": "mlp", "hidden": 4}, {}]


def test_a_model_job_reads_as_a_job_of_its_slices():
    job = job_from_table(table(split=[3], mode="backprop"))
    assert (job.model, job.split, job.balance, len(job.stages)) == (MODEL, (3,), 0, 2)
    assert job.stages[1].params == {"model": MODEL, "start": 3, "end": 7, "seed": 2}


@pytest.mark.parametrize("keys, message", [
    ({"split": [2], "stages": [{"kind": "linear"}]}, r"either a model cut by split, cut or stages = N, or a list of \[\[stages\]\], not both"),
    ({"split": [2], "stages": 3}, "give one of split = .*, cut = .* or stages = N"),
    ({}, "needs split = .* \\(cut points between its children\\), cut = .* or stages = N"),
    ({"split": [4, 2]}, r"split \[4, 2\] must be strictly increasing"),
    ({"split": [2, 2]}, r"split \[2, 2\] must be strictly increasing"),
    ({"split": [0, 3]}, r"split \[0, 3\] must cut between its 7 children, at 1 to 6"),
    ({"split": [3, 7]}, r"split \[3, 7\] must cut between its 7 children, at 1 to 6"),
    ({"split": []}, "split must be a list of cut points like"),
    ({"split": ["2"]}, "split must be a list of cut points like"),
    ({"stages": 1}, "stages must be a number of stages from 2 to its 7 children, got 1"),
    ({"stages": 8}, "stages must be a number of stages from 2 to its 7 children, got 8"),
    ({"stages": True}, "stages must be a number of stages"),
    ({"split": [2], "synthesizer": SYNTH, "synthesizers": [SYNTH]}, "give synthesizer .* or synthesizers .*, not both"),
    ({"split": [2, 4], "synthesizers": [SYNTH]}, r"synthesizers must list one table .* per cut \(2\)"),
    ({"split": [2], "synthesizer": "mlp"}, "synthesizer must be a table"),
])
def test_bad_model_keys_are_refused_naming_the_model(keys, message):
    with pytest.raises(ConfigError, match=f"model '{MODEL}'.*{message}"):
        job_from_table(table(**keys), "job.toml")


@pytest.mark.parametrize("keys, message", [
    ({"split": [2]}, "split, cut, stages = N, synthesizer and synthesizers go with model"),
    ({"cut": ["a"]}, "split, cut, stages = N, synthesizer and synthesizers go with model"),
    ({"stages": 3}, "split, cut, stages = N, synthesizer and synthesizers go with model"),
])
def test_model_keys_without_a_model_are_refused(keys, message):
    plain = {key: value for key, value in table(**keys).items() if key != "model"}
    with pytest.raises(ConfigError, match=f"job.toml: {message}"):
        job_from_table(plain, "job.toml")


def test_a_model_that_is_no_import_path_is_refused():
    with pytest.raises(ConfigError, match="model must be an import path 'package.module:function', got 'make'"):
        job_from_table(table(model="make", split=[2]))


def test_a_model_with_too_few_children_fails_when_the_job_is_read():
    with pytest.raises(ConfigError, match="job.toml: model 'tests.unit.test_model_slice:lonely' has 1 child module"):
        job_from_table(table(model="tests.unit.test_model_slice:lonely", split=[1]), "job.toml")


def test_segments_run_from_the_first_child_to_the_last():
    assert segments((2, 4), 6) == [(0, 2), (2, 4), (4, 6)]
    assert segments((1,), 2) == [(0, 1), (1, 2)]


def test_a_stage_without_parameters_is_refused():
    with pytest.raises(ConfigError, match=r"split \[1\] leaves stage 0 \(children \[0:1\]\) without parameters to train"):
        job_from_table(table(split=[1]))
    with pytest.raises(ConfigError, match="stages = 5, but only 4 of its children have parameters to train"):
        job_from_table(table(stages=5))


def test_balanced_cuts_give_every_stage_a_child_with_parameters():
    assert balanced_cuts([5.0, 1.0, 1.0, 1.0], 2, [False, True, True, True]) == (2,)
    assert balanced_cuts([1.0, 1.0, 1.0, 9.0], 2, [True, True, True, False]) == (2,)  # not (3,): 9 alone cannot train


@pytest.mark.parametrize("times, stages, cuts", [
    ([1, 1, 1, 1, 1, 1], 3, (2, 4)),
    ([12, 43, 37, 19, 1], 3, (2, 3)),
    ([10, 1, 1, 1, 1], 2, (1,)),
    ([1, 1, 1, 1, 10], 2, (4,)),
    ([4, 1, 1, 1, 1, 4], 3, (1, 5)),
    ([5, 5], 2, (1,)),
])
def test_balanced_cuts_make_the_slowest_stage_as_fast_as_it_can_be(times, stages, cuts):
    def slowest(candidate: tuple[int, ...]) -> float:
        return max(sum(times[start:end]) for start, end in segments(candidate, len(times)))

    assert balanced_cuts(times, stages, [True] * len(times)) == cuts
    assert slowest(cuts) == min(slowest(other) for other in combinations(range(1, len(times)), stages - 1))


TRACED = "tests.unit.test_model_piece:skip"  # children a, b, c, d; a's output skips to d


def test_a_cut_makes_one_piece_stage_per_part_named_after_its_cut_taking_the_parts_it_uses():
    stages, fields = model_table(table(model=TRACED, cut=["a", "b", "c"], synthesizer=SYNTH))
    assert fields == {"model": TRACED, "cut": ("a", "b", "c"), "balance": 0}
    assert [stage["kind"] for stage in stages["stages"]] == [MODEL_PIECE] * 4
    assert [(stage["name"], stage["inputs"], stage["piece"]) for stage in stages["stages"]] == [
        ("a", ["data"], 0), ("b", ["a"], 1), ("c", ["b"], 2), ("head", ["a", "c"], 3)]
    assert [stage["synthesizer"] for stage in stages["stages"]] == [SYNTH, SYNTH, SYNTH, {}]


def test_stages_n_of_any_other_module_than_a_sequential_is_traced_and_starts_even_among_its_children():
    _, fields = model_table(table(model=TRACED, stages=2))
    assert fields == {"model": TRACED, "cut": ("b",), "balance": 2}
    with pytest.raises(ConfigError, match=r"stages must be a number of stages from 2 to 4 \(it can be cut after \['a', 'b', 'c'\]\)"):
        model_table(table(model=TRACED, stages=5))


def test_a_traced_job_reads_back_from_its_table():
    job = job_from_table(table(model=TRACED, cut=["b"]))
    assert job_from_table(job_as_table(job)) == job


@pytest.mark.parametrize("keys, says", [
    ({"cut": ["a"], "split": [1]}, "give one of split = [i, j, ...], cut = [\"name\", ...] or stages = N"),
    ({"cut": "a"}, "cut must be a list of submodule names"),
    ({"model": "tests.unit.test_tracing:Marked", "stages": 2}, "marks its own cuts with dni.cut_here(); give those or stages = N"),
])
def test_traced_keys_that_do_not_go_together_are_refused(keys, says):
    with pytest.raises(ConfigError) as refused:
        model_table(table(**{"model": TRACED, **keys}))
    assert says in str(refused.value)
