"""dni/spec.py: a stage's assignment travels as a plain map and is checked field by field on arrival."""
from __future__ import annotations

from dataclasses import replace

import pytest

from dni.errors import ConfigError
from dni.spec import Mode, OptimizerSpec, StageAssignment, StageSpec, SynthesizerSpec
from dni.testing import chain_edges

CONFIG = StageAssignment(job="job-1", index=1, num_stages=3,
                         spec=StageSpec("linear_bn_relu", {"features": 8}, SynthesizerSpec("mlp", {"hidden": 4})),
                         mode=Mode.CDNI, input_shape=(1, 28, 28), num_classes=10, optimizer=OptimizerSpec("sgd", 0.5), seed=3,
                         window=2, threads=1, coordinator="ipc:///tmp/c", **chain_edges(1, (1, 28, 28), "ipc:///tmp/s0.backward", "ipc:///tmp/s2.forward"))


def wire(**changes) -> dict:
    return {**CONFIG.to_wire(), **changes}


def test_an_assignment_survives_the_wire_without_its_workers_address():
    sent = CONFIG.to_wire()
    assert (sent["mode"], sent["input_shape"]) == ("cdni", [1, 28, 28])
    assert StageAssignment.from_wire(sent) == CONFIG
    remote = replace(CONFIG, spec=replace(CONFIG.spec, address="tcp://w:5555"))
    assert "address" not in remote.to_wire()["spec"], "where the worker lives is the coordinator's business"
    assert StageAssignment.from_wire(remote.to_wire()).spec.address is None
    assert (CONFIG.is_first, CONFIG.is_last) == (False, False)


@pytest.mark.parametrize("changes, message", [
    ({"index": 3}, "^index 3 is outside 0..2$"),
    ({"index": True}, "^index must be int, got True$"),
    ({"window": 0}, "^window must be at least 1, got 0$"),
    ({"threads": 0}, "^threads must be at least 1, got 0$"),
    ({"mode": "turbo"}, "^mode 'turbo' is not one of backprop, sg, cdni, sl, no_bprop$"),
    ({"optimizer": {"name": "lbfgs", "lr": 0.1}}, "^optimizer.name 'lbfgs' is not one of adam, sgd$"),
    ({"optimizer": {"name": "sgd", "lr": 0}}, "^optimizer.lr must be a positive number, got 0$"),
    ({"input_shape": [1, 0, 28]}, r"^input_shape must be positive integers, got \[1, 0, 28\]$"),
    ({"nonfinite": "ignore"}, "^nonfinite 'ignore' is not one of reject, count$"),
    ({"restore": 5}, "^restore must be a checkpoint path$"),
    ({"inputs": []}, "^a stage needs at least one input edge$"),
    ({"outputs": [{"name": "stage1", "peer": 1, "address": "ipc:///x"}]},
     r"^output edges must go to distinct other stages, each with an address, got \[1\]$"),
    ({"inputs": [{"name": "data", "peer": -1, "address": None, "shape": [3]}]},
     r"^input_shape \[1, 28, 28\] is not the join of the input edges' shapes$"),
    ({"optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}},
     r"^optimizer has unknown settings \['momentum'\]; known: name, lr$"),
    ({"spec": {**CONFIG.to_wire()["spec"], "device": "tpu"}}, "^device 'tpu' is not one of cpu, cuda, cuda:N, auto$"),
])
def test_a_bad_field_is_named(changes, message):
    with pytest.raises(ConfigError, match=message):
        StageAssignment.from_wire(wire(**changes))


def test_a_sequence_assignment_travels_with_its_truncation_discount_and_per_step_loss():
    sequence = replace(CONFIG, mode=Mode.SG, truncation=3, discount=0.5, loss="bits")
    assert StageAssignment.from_wire(sequence.to_wire()) == sequence
    old = wire()
    del old["truncation"], old["discount"]
    assert (StageAssignment.from_wire(old).truncation, StageAssignment.from_wire(old).discount) == (0, 1.0)


@pytest.mark.parametrize("changes, message", [
    ({"truncation": -1}, "^truncation must not be negative \\(0: a feed-forward job\\), got -1$"),
    ({"truncation": 3, "discount": 1.5}, "^discount must lie in 0..1, got 1.5$"),
])
def test_a_bad_sequence_field_is_named(changes, message):
    with pytest.raises(ConfigError, match=message):
        StageAssignment.from_wire(wire(**changes))


def test_a_missing_field_or_a_config_that_is_no_map_is_refused():
    incomplete = wire()
    del incomplete["seed"]
    with pytest.raises(ConfigError, match="^stage config is incomplete or malformed: 'seed'$"):
        StageAssignment.from_wire(incomplete)
    with pytest.raises(ConfigError, match="^stage config must be a map$"):
        StageAssignment.from_wire([1, 2])
