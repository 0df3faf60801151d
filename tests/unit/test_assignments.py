"""coordinator/jobs/assignments.py: every trainer tells a stage the job's worker settings and what it resolved."""
from __future__ import annotations

from dataclasses import replace

from dni.coordinator.jobs.assignments import stage_assignment
from dni.coordinator.jobs.job import job_from_table
from dni.protocol import Endpoints
from dni.spec import WORKER_SETTINGS, Mode, StageAssignment

ENDPOINTS = [Endpoints(f"ipc://s{index}.control", f"ipc://s{index}.forward", f"ipc://s{index}.backward") for index in range(3)]
TABLE = {"name": "unit", "dataset": "mnist", "mode": "cdni", "seed": 7, "window": 2, "threads": 3, "link_delay_ms": 5,
         "record_spans": True, "nonfinite": "count", "optimizer": {"name": "sgd", "lr": 0.1},
         "stages": [{"kind": "linear_bn_relu", "features": 8}] * 2 + [{"kind": "linear", "features": 10}]}


def test_a_stage_is_told_every_worker_setting_of_the_job_and_its_neighbours():
    job = job_from_table(TABLE)
    middle = stage_assignment(job, 1, ENDPOINTS, {0: [8]}, "ipc://c", "ck/stage-1.pt", "job-1", num_classes=10, loss="multi_margin")
    assert {row.name: getattr(middle, row.name) for row in WORKER_SETTINGS} == {
        row.name: getattr(job, row.name) for row in WORKER_SETTINGS}
    assert (middle.mode, middle.seed, middle.link_delay_ms, middle.optimizer.name) == (Mode.CDNI, 7, 5.0, "sgd")
    assert neighbours(middle) == (["ipc://s0.backward"], ["ipc://s2.forward"])
    assert (middle.job, middle.num_stages, middle.spec, middle.input_shape, middle.threads) == ("job-1", 3, job.stages[1], (8,), 3)
    assert (middle.num_classes, middle.loss, middle.restore, middle.coordinator) == (10, "multi_margin", "ck/stage-1.pt", "ipc://c")
    assert StageAssignment.from_wire(middle.to_wire()) == middle


def test_the_first_and_last_stages_have_one_neighbour_and_a_fresh_run_no_checkpoint():
    job = replace(job_from_table(TABLE), threads=0)
    first, last = (stage_assignment(job, index, ENDPOINTS, {index - 1: [4]}, "ipc://c", None, "j", num_classes=10, loss="cross_entropy")
                   for index in (0, 2))
    assert (*neighbours(first), first.restore) == ([None], ["ipc://s1.forward"], None)
    assert (*neighbours(last), last.is_last) == (["ipc://s1.backward"], [], True)
    assert first.threads >= 1, "threads = 0 shares the cores: the worker is told its share"


def neighbours(config: StageAssignment) -> tuple[list, list]:
    """The sockets at the other ends of a stage's input and output edges."""
    return [edge.address for edge in config.inputs], [edge.address for edge in config.outputs]
