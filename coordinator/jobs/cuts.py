"""A job's own model cut into stages: the job keys `model`, `split` or `stages = N`, `synthesizer(s)`.

`model_table` turns such a job table into one of ordinary `[[stages]]`, one
`model_slice` stage per cut, after checking the cuts against the model's
children (built once here, as every worker will build it). `balanced_cuts` is
the arithmetic of `stages = N`: contiguous groups of children whose slowest
group is as fast as it can be.
"""
from __future__ import annotations

from typing import Any, Sequence

from dni.errors import ConfigError
from dni.workers.build.model_slice import MODEL_SLICE, model_children

__all__ = ["MODEL_KEYS", "balanced_cuts", "check_cuts", "model_table", "segments"]

MODEL_KEYS = ("model", "split", "synthesizer", "synthesizers")


def model_table(table: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(`table` with `[[stages]]` made from the model's cuts and the model keys taken out, the Job's model fields).

    The fields are `model`, `split` (the cut points) and `balance` (N for `stages = N`, whose cuts are measured
    when the run knows its input shape; until then they share the children out evenly).
    """
    table = dict(table)
    model = table.pop("model", None)
    if not isinstance(model, str) or ":" not in model:
        raise ConfigError(f"model must be an import path 'package.module:function', got {model!r:.60}"
                          if model is not None else "split, stages = N, synthesizer and synthesizers go with model = \"package.module:function\"")
    split, stages = table.pop("split", None), table.pop("stages", None)
    if isinstance(stages, list):
        raise ConfigError(f"model {model!r}: a job is either a model cut by split or stages = N, or a list of [[stages]], not both")
    if split is not None and stages is not None:
        raise ConfigError(f"model {model!r}: give split = [i, j, ...] or stages = N, not both")
    if split is None and stages is None:
        raise ConfigError(f"model {model!r} needs split = [i, j, ...] (cut points between its children) or stages = N")
    seed = table.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"seed must be int, got {seed!r:.60}")
    trainable = [any(True for _ in child.parameters()) for child in model_children(model, seed)]
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
