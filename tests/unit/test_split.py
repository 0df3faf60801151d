"""coordinator/jobs/split.py: dni.split makes a job's stages from a model named by path or by an importable function,
refuses one the workers could not import, and a stages = N job is cut where the measured stages are most even."""
from __future__ import annotations

import pytest
from torch import nn

import dni
from dni.coordinator.jobs import split as split_module
from dni.coordinator.jobs.job import job_as_table, job_from_table
from dni.coordinator.jobs.split import balance_job, measure_children, measure_pieces, model_path, split
from dni.errors import ConfigError
from dni.workers.build.model_slice import MODEL_SLICE, build_model, model_children
from dni.workers.build.partition import Partition
from dni.workers.build.tracing import trace
from tests.conftest import small_job
from tests.unit.test_model_slice import make

MODEL = "tests.unit.test_model_slice:make"
SYNTH = {"kind": "mlp", "hidden": 8, "layers": 1}


@pytest.fixture
def job(tmp_path):
    return small_job(tmp_path, tmp_path, seed=4)


def test_dni_split_is_the_public_name():
    assert dni.split is split


def test_split_replaces_the_stages_with_slices_of_the_model_and_keeps_the_rest(job):
    cut = split(job, MODEL, split=[2, 5], synthesizer=SYNTH)
    assert (cut.model, cut.split, cut.balance, cut.batch_size, cut.seed) == (MODEL, (2, 5), 0, job.batch_size, 4)
    assert [stage.kind for stage in cut.stages] == [MODEL_SLICE] * 3
    assert [stage.params["end"] for stage in cut.stages] == [2, 5, 7]
    assert [stage.synthesizer.params for stage in cut.stages[:2]] == [{"hidden": 8, "layers": 1}] * 2


def test_an_importable_function_is_named_by_its_path(job):
    assert model_path(make) == MODEL
    assert split(job, make, stages=2).stages == split(job, MODEL, stages=2).stages


def local_model():
    def inner() -> nn.Module:
        return make()
    return inner


@pytest.mark.parametrize("model", [lambda: make(), local_model()])
def test_a_lambda_or_local_function_is_refused_since_the_workers_could_not_import_it(job, model):
    with pytest.raises(ConfigError, match="must be importable as 'package.module:function'.*"
                                          "it is a lambda or a function defined inside another"):
        split(job, model, split=[1])


def test_a_function_of_the_running_script_is_refused(job):
    def main_model() -> nn.Module:
        return make()
    main_model.__module__, main_model.__qualname__ = "__main__", "main_model"
    with pytest.raises(ConfigError, match=r"it is a function of the script being run \(__main__\)"):
        model_path(main_model)


def test_a_model_job_goes_into_job_json_and_reads_back_the_same(job):
    for cut in (split(job, MODEL, split=[3], synthesizers=[SYNTH]), split(job, MODEL, stages=3)):
        table = job_as_table(cut)
        assert "stages" not in table or table["stages"] == 3
        assert job_from_table(table) == cut


def test_a_job_of_its_own_stages_is_not_balanced(job):
    assert balance_job(job, (1, 28, 28)) == (job, None)


def test_a_model_cut_by_hand_is_run_as_it_is_and_its_cuts_are_recorded(job):
    by_hand = split(job, MODEL, split=[3], synthesizers=[SYNTH])
    assert balance_job(by_hand, (12,)) == (by_hand, {"split": [3], "how": "as the job says"})


def test_stages_n_is_cut_where_the_measured_stages_are_most_even(job, monkeypatch):
    times = [1.0, 1.0, 4.0, 1.0, 1.0, 1.0, 3.0]
    monkeypatch.setattr(split_module, "measure_children", lambda children, shape, batch: times)
    balanced, record = balance_job(split(job, MODEL, stages=3, synthesizer=SYNTH), (12,))
    assert (balanced.split, balanced.balance) == ((2, 4), 0)
    assert [stage.synthesizer.params for stage in balanced.stages[:2]] == [{"hidden": 8, "layers": 1}] * 2
    assert record is not None
    assert (record["split"], record["stage_ms"]) == ([2, 4], [2.0, 5.0, 5.0])
    assert record["how"].startswith("split [2, 4] from measured child times [1.0, 1.0, 4.0, 1.0, 1.0, 1.0, 3.0] ms")


def test_every_child_is_timed_on_its_predecessors_output():
    times = measure_children(model_children(MODEL, 0), (3, 4), 8)
    assert len(times) == 7 and all(time > 0 for time in times)



TRACED = "tests.unit.test_model_piece:skip"  # children a, b, c, d; a's output skips to d


def test_a_traced_model_cut_by_hand_learns_the_datas_shape_and_is_recorded(job):
    by_hand = split(job, TRACED, cut=["a", "c"], synthesizer=SYNTH)
    fitted, record = balance_job(by_hand, (6,))
    assert record == {"cut": ["a", "c"], "how": "as the job says"}
    assert [stage.params["data_shape"] for stage in fitted.stages] == [[6]] * 3
    assert [stage.name for stage in fitted.stages] == ["a", "c", "head"]


def test_stages_n_of_a_traced_model_is_cut_where_its_measured_parts_are_most_even(job, monkeypatch):
    monkeypatch.setattr(split_module, "measure_pieces", lambda partition, shape, batch: [4.0, 1.0, 1.0, 2.0])
    balanced, record = balance_job(split(job, TRACED, stages=2, synthesizer=SYNTH), (6,))
    assert (balanced.cut, balanced.balance, record["cut"]) == (("a",), 0, ["a"])
    assert record["how"].startswith("cut after ['a'] from measured times [4.0, 1.0, 1.0, 2.0] ms of the parts after ['a', 'b', 'c']")
    assert [stage.params["data_shape"] for stage in balanced.stages] == [[6], [6]]


def test_every_part_of_a_traced_model_is_timed_on_what_its_inputs_carry():
    model = build_model(TRACED, 0)
    times = measure_pieces(Partition(trace(model, TRACED), model, ["a", "b", "c"], TRACED, whole=False), (6,), 8)
    assert len(times) == 4 and all(time > 0 for time in times)
