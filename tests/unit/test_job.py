"""coordinator/jobs/job.py: job files and tables are read, checked field by field with errors that name the field,
and written back in the form they are read."""
from __future__ import annotations

import re

import pytest

from dni.coordinator.jobs.job import SHORTCUTS, job_as_table, job_from_table, load_job, with_addresses
from dni.errors import ConfigError
from dni.spec import Mode, OptimizerSpec
from tests.conftest import mlp_stages, small_job


def test_shortcuts_load_the_reference_jobs_with_overrides_on_top():
    job = load_job("mnist", {"mode": "cdni", "lr": 1e-4, "window": None})
    assert (job.name, job.dataset, job.mode, job.batch_size, job.iterations, job.window) == (
        "mnist_fcn", "mnist", Mode.CDNI, 256, 25_000, 4)
    assert job.optimizer == OptimizerSpec("adam", 1e-4)
    assert [stage.kind for stage in job.stages] == ["linear_bn_relu", "linear_bn_relu", "linear"]
    assert job.stages[0].synthesizer.params == {"hidden": 1024, "layers": 2}
    text = {"text": __file__}  # the chars job reads a text file of the user's
    assert {name: load_job(name, text if name == "chars" else {}).name for name in SHORTCUTS} == {
        "mnist": "mnist_fcn", "mnist-smoke": "mnist_smoke", "cifar10": "cifar10_cnn", "copy": "copy",
        "repeat-copy": "repeat_copy", "chars": "chars"}


@pytest.mark.parametrize("change, message", [
    ({"mode": "fast"}, "mode 'fast' is not one of backprop, sg, cdni, sl, no_bprop"),
    ({"batch_size": 0}, "batch_size must be at least 1"),
    ({"batch_size": "big"}, "batch_size must be int"),
    ({"batch_size": True}, "batch_size must be int, got True"),
    ({"window": 0}, "window must be at least 1, got 0"),
    ({"eval_every": -1}, "eval_every must not be negative, got -1"),
    ({"time_limit": -5}, "time_limit must not be negative, got -5"),
    ({"iterations": 0}, "set iterations or epochs"),
    ({"nonfinite": "ignore"}, "nonfinite 'ignore' is not one of reject, count"),
    ({"dataset": "imagenet"}, "dataset 'imagenet' is not one of"),
    ({"colour": "red"}, "unknown setting 'colour'"),
    ({"optimizer": {"name": "lbfgs"}}, "optimizer.name 'lbfgs'"),
    ({"optimizer": {"lr": -1.0}}, "optimizer.lr must be a positive number"),
    ({"optimizer": {"lr": float("nan")}}, "optimizer.lr must be a positive number, got nan"),
    ({"optimizer": {"momentum": 0.9}}, r"optimizer has unknown settings \['momentum'\]"),
    ({"stages": mlp_stages()[:1]}, "at least two stages"),
    ({"stages": [{"features": 3}, *mlp_stages()]}, "stages\\[0\\] needs a 'kind'"),
    ({"stages": [{**mlp_stages()[0], "device": "tpu"}, *mlp_stages()[1:]]}, r"stages\[0\].device 'tpu' is not one of"),
    ({"stages": [{**mlp_stages()[0], "synthesizer": "mlp"}, *mlp_stages()[1:]]}, r"stages\[0\].synthesizer must be a table"),
    ({"stages": [{**mlp_stages()[0], "address": "udp://a:1"}, *mlp_stages()[1:]]}, r"stages\[0\].address must be a tcp:// or ipc://"),
    ({"stages": [{**mlp_stages()[0], "address": "tcp://a:5555"}, *mlp_stages()[1:]]}, "either every stage has an address"),
])
def test_bad_settings_name_the_field(change, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        small_job(tmp_path, tmp_path, **change)


SEQUENCE_STAGES = [{"kind": "lstm", "hidden": 8}, {"kind": "linear"}]


def sequence_table(**change):
    return {"name": "seq", "task": "copy", "truncation": 3, "stages": SEQUENCE_STAGES, **change}


def test_a_sequence_job_has_a_task_and_a_truncation_and_no_dataset():
    job = job_from_table(sequence_table(discount=0.5))
    assert (job.source, job.task, job.truncation, job.discount, job.dataset) == ("task", "copy", 3, 0.5, "")
    assert job_from_table(job_as_table(job)) == job, "a run folder's job.json reads back as the same job"
    assert load_job("mnist").source == "dataset"


@pytest.mark.parametrize("change, message", [
    ({"task": "sort"}, "task 'sort' is not one of copy, repeat-copy, chars"),
    ({"dataset": "mnist"}, "a sequence job generates its data \\(task = 'copy'\\): it has no dataset"),
    ({"truncation": 0}, "a sequence job needs truncation = T, its chunk length, of at least 1, got 0"),
    ({"task": "chars"}, "the chars task needs text = a text file \\(--text FILE\\), and only it reads one"),
    ({"text": "book.txt"}, "the chars task needs text = a text file"),
    ({"mode": "cdni"}, "a sequence job trains in backprop, sg, no_bprop, not cdni"),
    ({"discount": 2.0}, "discount must lie in 0..1, got 2.0"),
    ({"epochs": 3}, "a sequence job has no epochs: iterations counts its batches of sequences"),
    ({"text_window": 0}, "text_window must be at least 1, got 0"),
    ({"eval_every": 5, "loss": "multi_margin"}, "eval_every, loss: no meaning in a sequence job \\(its task sets its data"),
])
def test_a_bad_sequence_setting_is_named(change, message):
    with pytest.raises(ConfigError, match=message):
        job_from_table(sequence_table(**change))


def test_sequence_settings_in_a_dataset_job_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="truncation and text belong to a sequence job"):
        small_job(tmp_path, tmp_path, truncation=3)


def test_a_table_without_dataset_or_stages_is_refused():
    with pytest.raises(ConfigError, match="^job: a job needs 'dataset' \\(or a sequence 'task'\\) and at least two \\[\\[stages\\]\\]$"):
        job_from_table({"name": "x", "dataset": "mnist"})


def test_a_stage_keeps_its_parameters_and_synthesizer_apart(tmp_path):
    stage = {"kind": "conv_bn_relu", "channels": 8, "pool": "max", "device": "auto",
             "synthesizer": {"kind": "conv", "channels": 4}}
    job = small_job(tmp_path, tmp_path, stages=[stage, *mlp_stages()[1:]])
    spec = job.stages[0]
    assert (spec.kind, spec.params, spec.device) == ("conv_bn_relu", {"channels": 8, "pool": "max"}, "auto")
    assert (spec.synthesizer.kind, spec.synthesizer.params) == ("conv", {"channels": 4})
    assert spec.address is None


def test_steps_come_from_epochs_when_set(tmp_path):
    job = small_job(tmp_path, tmp_path, batch_size=64, iterations=200)
    assert (job.total_steps(6400), job.steps_per_epoch(6400), job.steps_per_epoch(10)) == (200, 100, 1)
    by_epochs = small_job(tmp_path, tmp_path, batch_size=64, epochs=3)
    assert by_epochs.total_steps(6400) == 300


def test_threads_share_the_cores_unless_set(tmp_path, monkeypatch):
    monkeypatch.setattr("dni.coordinator.jobs.job.os.cpu_count", lambda: 8)
    assert small_job(tmp_path, tmp_path, threads=0).threads_per_worker() == 2  # 8 cores, 3 stages
    assert small_job(tmp_path, tmp_path, threads=5).threads_per_worker() == 5
    monkeypatch.setattr("dni.coordinator.jobs.job.os.cpu_count", lambda: 2)
    assert small_job(tmp_path, tmp_path, threads=0).threads_per_worker() == 1


def test_a_job_written_as_a_table_reads_back_the_same(tmp_path):
    stages = mlp_stages()
    stages[0] = {**stages[0], "device": "cuda:1"}
    job = small_job(tmp_path, tmp_path, mode="cdni", stages=stages, checkpoint_every=7, tensorboard="tb")
    assert job_from_table(job_as_table(job)) == job
    remote = with_addresses(job, ["tcp://a:5555", "tcp://b:5555", "ipc:///tmp/c"])
    assert job_from_table(job_as_table(remote)) == remote
    assert [entry.address for entry in remote.stages] == ["tcp://a:5555", "tcp://b:5555", "ipc:///tmp/c"]


def test_workers_must_match_the_stages_in_number(tmp_path):
    with pytest.raises(ConfigError, match="^--workers lists 2 addresses but the job has 3 stages$"):
        with_addresses(small_job(tmp_path, tmp_path), ["tcp://a:5555", "tcp://b:5555"])


def test_a_job_that_is_neither_shortcut_nor_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"^job 'mnsit' is neither a shortcut \(mnist, mnist-smoke, cifar10, copy, repeat-copy, chars\) nor a TOML file$"):
        load_job("mnsit")
    broken = tmp_path / "broken.toml"
    broken.write_text("dataset = \n")
    with pytest.raises(ConfigError, match=f"^{broken}: not valid TOML"):
        load_job(str(broken))


def test_a_job_file_is_named_after_the_file_unless_it_names_itself(tmp_path):
    job_file = tmp_path / "tiny.toml"
    job_file.write_text('dataset = "mnist"\n[[stages]]\nkind = "linear"\nfeatures = 4\n[[stages]]\nkind = "linear"\nfeatures = 10\n')
    assert load_job(str(job_file)).name == "tiny"
    assert load_job(str(job_file), {"name": "renamed"}).name == "renamed"
    job_file.write_text('dataset = "mnist"\nbatch_size = 0\n[[stages]]\nkind = "linear"\nfeatures = 4\n')
    with pytest.raises(ConfigError, match=f"^{job_file}: a pipeline needs at least two stages"):
        load_job(str(job_file))


def test_dataset_normalize_and_num_classes_are_read_checked_and_written_back(tmp_path):
    job = small_job(tmp_path, tmp_path, dataset="tests.unit.test_datasets:good", normalize={"mean": [0.5], "std": [0.25]},
                    num_classes=12)
    assert (job.dataset, job.num_classes, job.normalize.mean, job.normalize.std) == (
        "tests.unit.test_datasets:good", 12, (0.5,), (0.25,))
    assert job_from_table(job_as_table(job)) == job
    assert small_job(tmp_path, tmp_path).normalize.setting() == "auto" and small_job(tmp_path, tmp_path).num_classes == 0
    assert load_job("mnist", {"dataset": "fashion_mnist"}).dataset == "fashion_mnist"


@pytest.mark.parametrize("change, message", [
    ({"dataset": "no_such_module:load"}, "^job: dataset plug-in 'no_such_module:load' cannot be imported: No module named 'no_such_module' \\(install it"),
    ({"normalize": "zscore"}, r"^job: normalize 'zscore' is not one of auto, standardize, none \(or \[\[mean\.\.\.\], \[std\.\.\.\]\]\)$"),
    ({"num_classes": -1}, r"^job: num_classes must not be negative \(0: the dataset's own count\), got -1$"),
    ({"num_classes": 2.5}, "^job: num_classes must be int, got 2.5$"),
])
def test_bad_data_settings_fail_when_the_job_is_read(change, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        small_job(tmp_path, tmp_path, **change)


def test_a_batch_larger_than_the_training_set_is_refused_naming_both(tmp_path):
    job = small_job(tmp_path, tmp_path, batch_size=1_000_000_000)
    with pytest.raises(ConfigError, match=r"batch_size = 1000000000 is larger than the training set \(6400 examples after "
                                          r"train_subset\): use at most 6400"):
        job.check_fits(6400)
    small_job(tmp_path, tmp_path, batch_size=6400).check_fits(6400)


def test_recovery_limits_are_read_and_checked(tmp_path):
    job = small_job(tmp_path, tmp_path, max_recoveries=5, recovery_window=600)
    assert (job.max_recoveries, job.recovery_window) == (5, 600)
    assert job_as_table(job)["max_recoveries"] == 5
    with pytest.raises(ConfigError, match="recovery_window must be at least 1"):
        small_job(tmp_path, tmp_path, recovery_window=0)
    with pytest.raises(ConfigError, match="max_recoveries must not be negative"):
        small_job(tmp_path, tmp_path, max_recoveries=-1)


TOWERS = [{"name": "left", "inputs": ["data"], "kind": "linear_bn_relu", "features": 8, "columns": [0, 14]},
          {"name": "right", "inputs": ["data"], "kind": "linear_bn_relu", "features": 8, "columns": [14, 28]},
          {"name": "head", "inputs": ["left", "right"], "join": "cat", "kind": "linear", "features": 10,
           "loss": "cross_entropy", "loss_weight": 2.0}]


def test_a_graph_job_reads_its_names_inputs_and_heads_and_writes_them_back(tmp_path):
    job = small_job(tmp_path, tmp_path, stages=TOWERS)
    head = job.stages[2]
    assert (head.name, head.inputs, head.join, head.loss, head.loss_weight) == ("head", ("left", "right"), "cat",
                                                                                "cross_entropy", 2.0)
    assert job.stages[0].params == {"features": 8, "columns": [0, 14]}, "a stage's parameters keep apart from its place"
    assert job.topology.inputs == ((-1,), (-1,), (0, 1)) and job.topology.heads == (2,)
    assert job_from_table(job_as_table(job)) == job
    chain = small_job(tmp_path, tmp_path)
    assert all(set(stage) <= {"kind", "device", "synthesizer", "features"} for stage in job_as_table(chain)["stages"])


@pytest.mark.parametrize("change, message", [
    ({2: {"inputs": ["left", "rigth"]}}, "stage 'head' takes input 'rigth', but no stage is named so"),
    ({1: {"inputs": ["head"]}}, "form a cycle"),
    ({2: {"inputs": ["left"]}}, "stage 'right' reaches no head"),
    ({0: {"labels": "m:f"}}, "stage 'left': labels, num_classes and loss_weight belong to a head"),
    ({2: {"join": "max"}}, "stages[2].join 'max' is not one of cat, sum"),
    ({2: {"loss_weight": 0}}, "stages[2].loss_weight must be a positive number, got 0"),
    ({2: {"labels": "parity"}}, "stages[2].labels 'parity' is not an import path package.module:function"),
    ({2: {"inputs": "left"}}, "stages[2].inputs must be list"),
])
def test_a_graph_that_does_not_hold_is_refused_naming_the_stage(change, message, tmp_path):
    stages = [{**stage, **change.get(index, {})} for index, stage in enumerate(TOWERS)]
    with pytest.raises(ConfigError, match=re.escape(message)):
        small_job(tmp_path, tmp_path, stages=stages)


def test_a_sequence_job_keeps_to_a_chain():
    with pytest.raises(ConfigError, match="a sequence job's stages form a chain"):
        job_from_table({"name": "x", "task": "copy", "truncation": 2, "mode": "sg",
                        "stages": [{"kind": "lstm", "hidden": 4, "name": "core"},
                                   {"kind": "linear", "features": 8, "inputs": ["data", "core"]}]})
