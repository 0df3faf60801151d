"""Your own model as a job: `split` cuts a job's model into stages, `balance_job` measures where `stages = N` cuts.

    job = dni.load_job("mnist", {"iterations": 2000})
    job = dni.split(job, "mymodels:make", stages=3, synthesizer={"kind": "mlp", "hidden": 512})
    job = dni.split(job, "mymodels:resnet", cut=["layer1", "layer2", "layer3"])  # any module, traced
    folder, summary = dni.run_job(job)

Every worker builds the model in its own process, so the model is named by its
import path (`package.module:function`); a function given instead must be one
that path reaches. `stages = N` is measured when the run knows its input shape:
each child (of a traced model: each part between its children) runs forward and
backward on a batch of the job's shape, and the cuts are those whose slowest
stage takes the least time (`balanced_cuts`). A traced model's stages learn the
data's shape here too, which they need to know what crosses each cut.
"""
from __future__ import annotations

import logging
import statistics
from dataclasses import replace
import time
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import nn

from dni.coordinator.jobs.cuts import MODEL_KEYS, balanced_cuts, even_cuts, segments
from dni.coordinator.jobs.job import Job, job_as_table, job_from_table
from dni.errors import ConfigError
from dni.workers.build.contracts import Shape
from dni.workers.build.model_piece import MODEL_PIECE, piece_of
from dni.workers.build.model_slice import build_model, model_children
from dni.workers.build.partition import Partition, top_level_cuts
from dni.workers.build.tracing import trace
from dni.workers.build.registry import import_callable

__all__ = ["balance_job", "measure_children", "measure_pieces", "model_path", "split"]

log = logging.getLogger("dni.split")
REPEATS = 3  # timed passes per child, after one that warms up; the median counts


def split(job: Job, model: Union[str, Callable[[], nn.Module]], *, split: Optional[Sequence[int]] = None,
          cut: Optional[Sequence[str]] = None, stages: Optional[int] = None, synthesizer: Optional[dict[str, Any]] = None,
          synthesizers: Optional[Sequence[dict[str, Any]]] = None) -> Job:
    """`job` with its stages made from `model`: an nn.Sequential cut at `split` (points between children), any module
    cut after the submodules named in `cut` (and at its `dni.cut_here()` marks), or either into `stages` of equal cost.

    `synthesizer` (a table like {"kind": "mlp", "hidden": 1024}) applies to every cut, `synthesizers` lists one per
    cut. The same checks and errors as the job keys of the same names (ConfigError).
    """
    table = job_as_table(job)
    for key in ("stages", *MODEL_KEYS):
        table.pop(key, None)
    table["model"] = model_path(model)
    choices = {"split": None if split is None else list(split), "cut": None if cut is None else list(cut),
               "stages": stages, "synthesizer": synthesizer,
               "synthesizers": None if synthesizers is None else list(synthesizers)}
    table.update({key: value for key, value in choices.items() if value is not None})
    return job_from_table(table, "dni.split")


def model_path(model: Union[str, Callable[[], nn.Module]]) -> str:
    """`package.module:function` for a model function, which the workers import by that path."""
    if isinstance(model, str):
        return model
    path = f"{getattr(model, '__module__', '?')}:{getattr(model, '__qualname__', '?')}"
    why = ("a lambda or a function defined inside another" if "<" in path
           else "a function of the script being run (__main__)" if path.startswith("__main__:") else "")
    if not why:
        try:
            why = "" if import_callable(path, "model") is model else f"{path} names another object"
        except ConfigError as error:
            why = str(error)
    if why:
        raise ConfigError(f"model {model!r}: every worker builds the model in its own process, so it must be importable as "
                          f"'package.module:function' (define it at the top level of a module on the workers' path); "
                          f"it is {why}")
    return path


def balance_job(job: Job, input_shape: Shape) -> tuple[Job, Optional[dict[str, Any]]]:
    """A `stages = N` job cut where its measured stages are most even, and how it was cut; a job of its own model
    cut by hand as it is, with its cuts; any other job as it is. A traced model's stages are told the data's shape."""
    if job.model and job.stages[0].kind == MODEL_PIECE:
        return _fit_traced(job, input_shape)
    if job.model and not job.balance:
        log.info("model %s: split %s, as the job says", job.model, list(job.split))
        return job, {"split": list(job.split), "how": "as the job says"}
    if not job.balance:
        return job, None
    children = model_children(job.model, job.seed)
    times = measure_children(children, input_shape, job.batch_size)
    cuts = balanced_cuts(times, job.balance, [any(True for _ in child.parameters()) for child in children])
    child_ms = [round(time, 3) for time in times]
    stage_ms = [round(sum(times[start:end]), 3) for start, end in segments(cuts, len(children))]
    how = (f"split {list(cuts)} from measured child times {child_ms} ms "
           f"(forward and backward, batch {job.batch_size}): stages take {stage_ms} ms")
    log.info("model %s: %s", job.model, how)
    synthesizers = [{"kind": stage.synthesizer.kind, **stage.synthesizer.params} for stage in job.stages[:-1]]
    balanced = split(job, job.model, split=cuts, synthesizers=synthesizers)
    return balanced, {"split": list(cuts), "child_ms": child_ms, "stage_ms": stage_ms, "how": how}


def _fit_traced(job: Job, input_shape: Shape) -> tuple[Job, dict[str, Any]]:
    """A traced model's job: its cuts measured for `stages = N`, and every stage told the data's shape."""
    record: dict[str, Any] = {"cut": list(job.cut), "how": "as the job says"}
    if job.balance:
        model = build_model(job.model, job.seed)
        graph = trace(model, job.model)
        candidates = top_level_cuts(graph, model, job.model)
        times = measure_pieces(Partition(graph, model, candidates, job.model, whole=False), input_shape, job.batch_size)
        cut = even_cuts(graph, model, job.model, candidates, job.balance, times)
        how = (f"cut after {cut} from measured times {[round(time, 3) for time in times]} ms of the parts after "
               f"{candidates} (forward and backward, batch {job.batch_size})")
        synthesizers = [{"kind": stage.synthesizer.kind, **stage.synthesizer.params} for stage in job.stages[:-1]]
        job = split(job, job.model, cut=cut, synthesizers=synthesizers)
        record = {"cut": cut, "part_ms": [round(time, 3) for time in times], "how": how}
    log.info("model %s: %s", job.model, record["how"])
    shape = list(input_shape)
    stages = tuple(replace(stage, params={**stage.params, "data_shape": shape}) for stage in job.stages)
    return replace(job, stages=stages), record


def measure_pieces(partition: Partition, input_shape: Shape, batch_size: int) -> list[float]:
    """Each part's time in ms for a forward and backward pass of a batch, each fed what its inputs carry."""
    pieces = [piece_of(partition, index, tuple(input_shape)) for index in range(partition.count)]
    sample = torch.randn(batch_size, *input_shape, generator=torch.Generator().manual_seed(0))
    passes: list[list[float]] = [[] for _ in pieces]
    for _ in range(REPEATS + 1):
        carried: dict[tuple[int, int], torch.Tensor] = {}
        for index, piece in enumerate(pieces):
            parts = [sample if crossing.producer < 0 else carried[crossing.producer, index]
                     for crossing in partition.inputs(index)]
            x = (parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)).detach().requires_grad_(index > 0)
            start = time.perf_counter()
            made = piece(x)
            outputs = made if isinstance(made, tuple) else (made,)
            learning = [output for output in outputs if output.requires_grad]  # none: a first part with no parameters
            if learning:
                torch.autograd.backward(learning, [torch.ones_like(output) for output in learning])
            passes[index].append((time.perf_counter() - start) * 1000)
            for crossing, output in zip(partition.outputs(index), outputs):
                carried[index, crossing.consumer] = output.detach()
    return [statistics.median(timed[1:]) for timed in passes]


def measure_children(children: Sequence[nn.Module], input_shape: Shape, batch_size: int) -> list[float]:
    """Each child's time in ms for a forward and backward pass of a batch, each fed its predecessor's output."""
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(batch_size, *input_shape, generator=generator)
    passes: list[list[float]] = [[] for _ in children]
    for _ in range(REPEATS + 1):
        h = sample
        for index, child in enumerate(children):
            h = h.detach().requires_grad_(index > 0 and h.is_floating_point())  # as in the stages: none for the data
            start = time.perf_counter()
            output = child(h)
            if output.requires_grad:
                output.backward(torch.ones_like(output))
            passes[index].append((time.perf_counter() - start) * 1000)
            h = output
    return [statistics.median(timed[1:]) for timed in passes]
