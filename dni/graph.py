"""The shape of a job: named stages joined by edges, checked as a graph before any worker starts.

Every stage names the stages (or `data`) whose outputs it takes; a list of stages that names none is a chain, each
stage taking the one before it (the first, the data), so every chain job is this graph too. A *head* is a stage
whose output a loss scores: the stages that declare a `loss`, or, where none does, the last one. Heads are where
the graph ends: nothing takes a head's output.

`Topology` is the graph without any tensor: who feeds whom, an order that respects it (configure, build and the
lost-stage diagnosis go in that order), and the checks a job file gets (unknown names, cycles, stages that no input
reaches or that reach no head). `join_shape` is how several inputs become one: concatenated along the first
per-example dimension (features, or channels), or summed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from dni.errors import ConfigError

__all__ = ["DATA", "JOINS", "Topology", "join_shape", "stage_label"]

DATA = "data"  # the input edge of the stages the coordinator feeds examples
JOINS = ("cat", "sum")


@dataclass(frozen=True)
class Topology:
    """Stages by index, each with its name and its inputs' indices (-1: the data), and which are heads."""
    names: tuple[str, ...]
    inputs: tuple[tuple[int, ...], ...]
    heads: tuple[int, ...]

    @classmethod
    def of(cls, names: Sequence[Optional[str]], inputs: Sequence[Optional[Sequence[str]]],
           heads: Sequence[bool]) -> "Topology":
        """The graph of stages named `names` (None: `stage<i>`) taking `inputs` (None: the stage before, the first the
        data), whose heads are those flagged (none flagged: the last stage). ConfigError names what does not fit."""
        named = tuple(name if name is not None else f"stage{index}" for index, name in enumerate(names))
        _check_names(named)
        index_of = {name: index for index, name in enumerate(named)}
        edges = []
        for index, taken in enumerate(inputs):
            taken = taken if taken is not None else [named[index - 1] if index else DATA]
            edges.append(tuple(_input_index(named[index], name, index_of) for name in _unique(named[index], taken)))
        flagged = tuple(index for index, head in enumerate(heads) if head)
        topology = cls(named, tuple(edges), flagged or (len(named) - 1,))
        topology._check()
        return topology

    @property
    def chain(self) -> bool:
        """Each stage takes the one before it (the first, the data) and the last is the only head."""
        return self.inputs == tuple((index - 1,) for index in range(len(self.names))) and self.heads == (len(self.names) - 1,)

    def consumers(self, index: int) -> tuple[int, ...]:
        """The stages that take stage `index`'s output (-1: the stages that take the data), in index order."""
        return tuple(stage for stage, taken in enumerate(self.inputs) if index in taken)

    def order(self) -> tuple[int, ...]:
        """Every stage after all of its inputs, in index order where the graph leaves a choice."""
        placed: list[int] = []
        while len(placed) < len(self.names):
            placed.append(next(stage for stage, taken in enumerate(self.inputs)
                               if stage not in placed and all(source in placed or source < 0 for source in taken)))
        return tuple(placed)

    def describe(self, index: int) -> str:
        """A stage as messages name it: its index and name."""
        return stage_label(index, self.names[index])

    def _check(self) -> None:
        cycle = self._cycle()
        if cycle:
            raise ConfigError(f"stages {' -> '.join(repr(self.names[stage]) for stage in cycle)} form a cycle")
        for head in self.heads:
            if self.consumers(head):
                taker = self.names[self.consumers(head)[0]]
                raise ConfigError(f"stage {self.names[head]!r} is a head (it has a loss) but {taker!r} takes its output: "
                                  "a head's output is scored, not passed on")
        scored = self._reaching_a_head()
        for stage in range(len(self.names)):
            if stage not in scored:
                raise ConfigError(f"stage {self.names[stage]!r} reaches no head: nothing takes its output and it has no loss")

    def _cycle(self) -> list[int]:
        """Stages that form a cycle, each feeding the next and back to the first; [] when there is none."""
        done: set[int] = set()

        def visit(stage: int, path: list[int]) -> list[int]:
            if stage in path:
                return [*path[path.index(stage):], stage]
            if stage in done:
                return []
            for source in self.inputs[stage]:
                found = visit(source, [*path, stage]) if source >= 0 else []
                if found:
                    return found
            done.add(stage)
            return []
        for stage in range(len(self.names)):
            found = visit(stage, [])
            if found:
                return found[::-1]
        return []

    def _reaching_a_head(self) -> set[int]:
        reaching: set[int] = set()
        frontier = list(self.heads)
        while frontier:
            stage = frontier.pop()
            if stage not in reaching:
                reaching.add(stage)
                frontier.extend(source for source in self.inputs[stage] if source >= 0)
        return reaching


def stage_label(index: int, name: str = "") -> str:
    """A stage as every message names it: its index, and its name where it has one (a chain's stages have none)."""
    return f"stage {index} ({name!r})" if name else f"stage {index}"


def join_shape(join: str, shapes: Sequence[tuple[int, ...]], where: str = "stage") -> tuple[int, ...]:
    """The per-example shape of several inputs joined: `cat` along their first dimension (every other the same),
    `sum` of one shape. One input is itself. ConfigError names the stage and the shapes that do not join."""
    if len(shapes) == 1:
        return tuple(shapes[0])
    listed = " and ".join(str(list(shape)) for shape in shapes)
    if join == "sum":
        if any(tuple(shape) != tuple(shapes[0]) for shape in shapes):
            raise ConfigError(f"{where}: inputs of shapes {listed} do not join by sum (it needs one shape)")
        return tuple(shapes[0])
    if join != "cat":
        raise ConfigError(f"{where}: join {join!r} is not one of {', '.join(JOINS)}")
    if any(len(shape) != len(shapes[0]) or tuple(shape[1:]) != tuple(shapes[0][1:]) for shape in shapes):
        raise ConfigError(f"{where}: inputs of shapes {listed} do not join by cat (all but the first dimension must agree)")
    return (sum(shape[0] for shape in shapes), *shapes[0][1:])


def _check_names(names: tuple[str, ...]) -> None:
    for name in names:
        if not name or name == DATA or not name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"stage name {name!r:.40} must be letters, digits, - or _, and not {DATA!r}")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ConfigError(f"two stages are named {name!r}")
        seen.add(name)


def _unique(stage: str, inputs: Sequence[str]) -> Sequence[str]:
    if not inputs:
        raise ConfigError(f"stage {stage!r} has no inputs, so no input reaches it: name {DATA!r} or the stages it takes")
    if len(set(inputs)) != len(inputs):
        raise ConfigError(f"stage {stage!r} takes an input twice: {list(inputs)}")
    return inputs


def _input_index(stage: str, name: str, index_of: dict[str, int]) -> int:
    if name == DATA:
        return -1
    if name not in index_of:
        raise ConfigError(f"stage {stage!r} takes input {name!r}, but no stage is named so (known: "
                          f"{', '.join([DATA, *index_of])})")
    return index_of[name]
