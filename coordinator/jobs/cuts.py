"""A job's own model cut into stages: the job keys `model`, `split`, `cut` or `stages = N`, `synthesizer(s)`.

`model_table` turns such a job table into one of ordinary `[[stages]]`, after checking the cuts against the model
(built once here, as every worker will build it). Two ways to cut:
- `split = [i, j]` cuts an `nn.Sequential` (or a module whose children run in order) between its children: one
  `model_slice` stage per slice, a chain.
- `cut = ["layer2", "layer3.1"]` (or `dni.cut_here()` marks in `forward`) cuts any module, traced: one
  `model_piece` stage per part, each value that crosses a cut an edge of the job's graph
  (`dni.workers.build.partition`), so a skip connection goes straight to the stage that uses it.
`stages = N` is the first for an `nn.Sequential` and the second for any other module, between its children.
`balanced_cuts` is the arithmetic of `stages = N`: contiguous groups whose slowest is as fast as it can be.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

from torch import fx, nn

from dni.errors import ConfigError
from dni.graph import DATA
from dni.workers.build.model_piece import MODEL_PIECE
from dni.workers.build.model_slice import MODEL_SLICE, build_model
from dni.workers.build.partition import Partition, top_level_cuts
from dni.workers.build.tracing import is_marker, trace

__all__ = ["MODEL_KEYS", "balanced_cuts", "check_cuts", "even_cuts", "model_table", "segments"]

MODEL_KEYS = ("model", "split", "cut", "synthesizer", "synthesizers")


def model_table(table: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(`table` with `[[stages]]` made from the model's cuts and the model keys taken out, the Job's model fields).

    The fields are `model`, `split` (the cut points between children) or `cut` (the submodules a traced model is
    cut after), and `balance` (N for `stages = N`, whose cuts are measured when the run knows its input shape;
    until then they share the children out evenly).
    """
    table = dict(table)
    model = table.pop("model", None)
    if not isinstance(model, str) or ":" not in model:
        raise ConfigError(f"model must be an import path 'package.module:function', got {model!r:.60}"
                          if model is not None else "split, cut, stages = N, synthesizer and synthesizers go with model = \"package.module:function\"")
    split, cut, stages = table.pop("split", None), table.pop("cut", None), table.pop("stages", None)
    if isinstance(stages, list):
        raise ConfigError(f"model {model!r}: a job is either a model cut by split, cut or stages = N, or a list of "
                          "[[stages]], not both")
    if sum(key is not None for key in (split, cut, stages)) > 1:
        raise ConfigError(f"model {model!r}: give one of split = [i, j, ...], cut = [\"name\", ...] or stages = N")
    seed = table.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"seed must be int, got {seed!r:.60}")
    built = build_model(model, seed)
    graph = trace(built, model) if cut is not None else _traced(built, model) if split is None else None
    if graph is not None:
        return _traced_table(table, graph, built, model, seed, cut, stages)
    if split is None and stages is None:
        raise ConfigError(f"model {model!r} needs split = [i, j, ...] (cut points between its children), "
                          "cut = [\"name\", ...] (submodules a stage ends after) or stages = N")
    trainable = [any(True for _ in child.parameters()) for child in _children(built, model)]
    count = len(trainable)
    balance = 0
    if stages is not None:
        balance = _check_count(stages, trainable, model)
        cuts = balanced_cuts([1.0] * count, balance, trainable)
    else:
        cuts = check_cuts(split, trainable, model)
    synthesizers = _synthesizers(table.pop("synthesizer", None), table.pop("synthesizers", None), len(cuts), model)
    table["stages"] = [
        {"kind": MODEL_SLICE, "model": model, "start": start, "end": end, "seed": seed, "synthesizer": synthesizer}
        for (start, end), synthesizer in zip(segments(cuts, count), [*synthesizers, {}])
    ]
    return table, {"model": model, "split": cuts, "balance": balance}


def _traced(model: nn.Module, name: str) -> Optional[fx.GraphModule]:
    """The trace of a model cut by tracing (any but an `nn.Sequential`, and one whose forward marks its cuts);
    None for one cut between its children."""
    if not isinstance(model, nn.Sequential):
        return trace(model, name)
    try:
        graph = trace(model, name)
    except ConfigError:
        return None  # an nn.Sequential that cannot be traced is cut between its children as before
    return graph if _marks(graph) else None


def _marks(graph: fx.GraphModule) -> bool:
    return any(is_marker(node) for node in graph.graph.nodes)


def _children(model: nn.Module, name: str) -> list[nn.Module]:
    children = list(model.children())
    if len(children) < 2:
        raise ConfigError(f"model {name!r} has {len(children)} child module{'' if len(children) == 1 else 's'}; "
                          "a split needs at least 2 (return an nn.Sequential of its layers or blocks)")
    return children


def _traced_table(table: dict[str, Any], graph: fx.GraphModule, model: nn.Module, name: str, seed: int, cut: Any,
                  stages: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """A traced model's stages: cut where `cut` says (and at its marks), or for `stages = N` evenly among its
    children until `balance_job` measures them."""
    balance = 0
    if stages is not None:
        candidates = top_level_cuts(graph, model, name)
        if not isinstance(stages, int) or isinstance(stages, bool) or not 2 <= stages <= len(candidates) + 1:
            raise ConfigError(f"model {name!r}: stages must be a number of stages from 2 to {len(candidates) + 1} "
                              f"(it can be cut after {candidates}), got {stages!r:.60}")
        if _marks(graph):
            raise ConfigError(f"model {name!r} marks its own cuts with dni.cut_here(); give those or stages = N, not both")
        balance = stages
        cut = even_cuts(graph, model, name, candidates, stages)
    elif cut is not None and not (isinstance(cut, list) and all(isinstance(path, str) for path in cut)):
        raise ConfigError(f"model {name!r}: cut must be a list of submodule names like [\"layer2\", \"layer3.1\"], got {cut!r:.60}")
    partition = Partition(graph, model, tuple(cut or ()), name)
    synthesizers = _synthesizers(table.pop("synthesizer", None), table.pop("synthesizers", None), partition.count - 1, name)
    table["stages"] = _piece_tables(partition, name, seed, list(cut or []), [*synthesizers, {}])
    return table, {"model": name, "cut": tuple(cut or ()), "balance": balance}


def even_cuts(graph: fx.GraphModule, model: nn.Module, name: str, candidates: Sequence[str], stages: int,
              times: Sequence[float] = ()) -> list[str]:
    """The children of traced `model` to cut after for `stages` stages of the least slowest total time (each
    child's part of the forward counted 1 where `times` are not given), each stage with parameters to train."""
    finest = Partition(graph, model, candidates, name, whole=False)
    trainable = [piece in finest.trained for piece in range(finest.count)]
    if stages > sum(trainable):
        raise ConfigError(f"model {name!r}: stages = {stages}, but only {sum(trainable)} of its parts between children "
                          "have parameters to train, and every stage needs some")
    cuts = balanced_cuts(list(times) or [1.0] * finest.count, stages, trainable)
    return [candidates[point - 1] for point in cuts]


def _piece_tables(partition: Partition, name: str, seed: int, cut: list[str],
                 synthesizers: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One `[[stages]]` entry per part of a traced model: named after its cut, taking the parts its values come from;
    its `data_shape` is filled in when the run knows it (`dni.coordinator.jobs.split.balance_job`)."""
    names = partition.stage_names()
    return [{"kind": MODEL_PIECE, "model": name, "cut": cut, "piece": piece, "seed": seed, "data_shape": [],
             "synthesizer": synthesizer, "name": names[piece],
             "inputs": [DATA if crossing.producer < 0 else names[crossing.producer] for crossing in partition.inputs(piece)]}
            for piece, synthesizer in zip(range(partition.count), synthesizers)]

def check_cuts(split: Any, trainable: Sequence[bool], model: str) -> tuple[int, ...]:
    """The cut points, strictly increasing integers from 1 to count - 1, each stage with parameters to train."""
    count = len(trainable)
    if not (isinstance(split, (list, tuple)) and split and all(isinstance(cut, int) and not isinstance(cut, bool) for cut in split)):
        raise ConfigError(f"model {model!r}: split must be a list of cut points like [2, 4], got {split!r:.60}")
    if any(later <= earlier for earlier, later in zip(split, split[1:])):
        raise ConfigError(f"model {model!r}: split {list(split)} must be strictly increasing")
    if not 1 <= split[0] <= split[-1] <= count - 1:
        raise ConfigError(f"model {model!r}: split {list(split)} must cut between its {count} children, at 1 to {count - 1}")
    for index, (start, end) in enumerate(segments(split, count)):
        if not any(trainable[start:end]):
            raise ConfigError(f"model {model!r}: split {list(split)} leaves stage {index} (children [{start}:{end}]) "
                              "without parameters to train; cut so that every stage holds some")
    return tuple(split)


def _check_count(stages: Any, trainable: Sequence[bool], model: str) -> int:
    count, most = len(trainable), sum(trainable)
    if not isinstance(stages, int) or isinstance(stages, bool) or not 2 <= stages <= count:
        raise ConfigError(f"model {model!r}: stages must be a number of stages from 2 to its {count} children, got {stages!r:.60}")
    if stages > most:
        raise ConfigError(f"model {model!r}: stages = {stages}, but only {most} of its children have parameters to train, "
                          "and every stage needs some")
    return stages


def _synthesizers(shared: Any, per_cut: Any, cuts: int, model: str) -> list[dict[str, Any]]:
    """One synthesizer table per cut: the shared `synthesizer`, or the list `synthesizers` (one per cut)."""
    if shared is not None and per_cut is not None:
        raise ConfigError(f"model {model!r}: give synthesizer (every cut) or synthesizers (one per cut), not both")
    if per_cut is None:
        if shared is not None and not isinstance(shared, dict):
            raise ConfigError(f"model {model!r}: synthesizer must be a table like {{ kind = \"mlp\", hidden = 1024 }}")
        return [dict(shared or {}) for _ in range(cuts)]
    if not (isinstance(per_cut, list) and len(per_cut) == cuts and all(isinstance(entry, dict) for entry in per_cut)):
        raise ConfigError(f"model {model!r}: synthesizers must list one table like {{ kind = \"mlp\" }} per cut ({cuts}), "
                          f"got {per_cut!r:.80}")
    return [dict(entry) for entry in per_cut]


def segments(cuts: Sequence[int], count: int) -> list[tuple[int, int]]:
    """(start, end) of each stage's children: cuts [2, 4] of 6 children are [0:2], [2:4], [4:6]."""
    bounds = [0, *cuts, count]
    return list(zip(bounds, bounds[1:]))


def balanced_cuts(times: Sequence[float], stages: int, trainable: Sequence[bool]) -> tuple[int, ...]:
    """Cut points into `stages` contiguous groups of children whose largest total time is the least possible.

    Every group holds a `trainable` child (one with parameters); `_check_count` makes sure that is possible.
    """
    prefix = [0.0]
    for time in times:
        prefix.append(prefix[-1] + time)
    count = len(times)
    # slowest[p][j]: the least slowest-group time of the first j children in p groups; start[p][j]: its last group's start
    slowest = [[float("inf")] * (count + 1) for _ in range(stages + 1)]
    start = [[0] * (count + 1) for _ in range(stages + 1)]
    slowest[0][0] = 0.0
    for parts in range(1, stages + 1):
        for end in range(parts, count + 1):
            for begin in range(parts - 1, end):
                if not any(trainable[begin:end]):
                    continue
                candidate = max(slowest[parts - 1][begin], prefix[end] - prefix[begin])
                if candidate < slowest[parts][end]:
                    slowest[parts][end], start[parts][end] = candidate, begin
    cuts, end = [], count
    for parts in range(stages, 1, -1):
        end = start[parts][end]
        cuts.append(end)
    return tuple(reversed(cuts))
