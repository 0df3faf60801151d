"""Where a traced model is cut: which of its operations each stage runs, and which values cross to which stage.

A cut ends a stage after the last operation of a named submodule (`cut = ["layer2"]`), or at a `cut_here()` mark;
every operation after one cut and up to the next is one stage, in the order the model runs them. A value made in
one stage and used in a later one is a `Crossing`, an edge of the job's graph from the stage that makes it to
each stage that uses it: a skip that jumps two cuts goes straight to its user, not through the stages between.
Several values from one stage to another travel as one edge, flattened and concatenated (`packed`), and so does
every edge into a stage of several inputs, so that its inputs join by `cat` as any graph stage's do.

What cannot be cut this way is refused with a ConfigError that says why, before any worker starts: a cut name
that is no submodule, a stage without parameters, a parameter or buffer used on both sides of a cut, an
in-place write across a cut, a model of several inputs or outputs, the data used after the first cut, and (once
the data's shape is known, `value_shapes`) a value that crosses a cut but is no batch of floats.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from dni.errors import ConfigError
from dni.workers.build.contracts import Shape
from dni.workers.build.tracing import is_marker, trace

__all__ = ["Crossing", "Partition", "cut_model", "top_level_cuts"]

HEAD = "head"  # the name of the last stage, which holds the model's output


@dataclass(frozen=True)
class Crossing:
    """The values stage `producer` makes that stage `consumer` uses (node names, in the model's order); -1: the data."""
    producer: int
    consumer: int
    values: tuple[str, ...]
    packed: bool


def cut_model(model: nn.Module, cut: Sequence[str], name: str) -> "Partition":
    """`model` traced and cut after each submodule named in `cut` and at each `cut_here()` mark."""
    return Partition(trace(model, name), model, tuple(cut), name)


def top_level_cuts(graph: fx.GraphModule, model: nn.Module, name: str) -> list[str]:
    """The children of `model` (traced as `graph`) that a cut may follow, in the order its forward finishes them:
    what `stages = N` balances over. A child after which a cut would be refused (an in-place write, a shared
    parameter) is left out."""
    candidates, refusals = [], []
    for child, _ in model.named_children():
        try:
            Partition(graph, model, (child,), name, whole=False)
        except ConfigError as error:
            refusals.append(error)
            continue
        candidates.append(child)
    if not candidates and refusals:
        raise refusals[0]
    order = {child: Partition.end_of(graph, child) for child in candidates}
    return sorted(candidates, key=order.__getitem__)[:-1]


class Partition:
    """A traced model cut into stages; `crossings` are the edges between them."""

    def __init__(self, graph: fx.GraphModule, model: nn.Module, cut: Sequence[str], name: str, whole: bool = True) -> None:
        self.graph, self.name = graph, name
        self.nodes = list(graph.graph.nodes)
        self.position = {node: index for index, node in enumerate(self.nodes)}
        self.by_name = {node.name: node for node in self.nodes}
        self.names, self.bounds = self._bounds(model, cut)
        self.piece = {node: self._piece_of(node) for node in self.nodes if not is_marker(node)}
        self._check_inputs_and_output()
        self._check_parameters(whole)
        self._check_in_place()
        self.crossings = self._crossings()
        self._shapes: dict[Shape, dict[str, Shape]] = {}
        if whole:
            self._check_each_stage_feeds_another()

    @property
    def count(self) -> int:
        return len(self.bounds) + 1

    def stage_names(self) -> list[str]:
        """Each stage named after the cut that ends it (dots as underscores); the last is `head`."""
        return [*(cut.replace(".", "_") for cut in self.names), HEAD]

    def inputs(self, stage: int) -> list[Crossing]:
        return [crossing for crossing in self.crossings if crossing.consumer == stage]

    def outputs(self, stage: int) -> list[Crossing]:
        return [crossing for crossing in self.crossings if crossing.producer == stage]

    @staticmethod
    def end_of(graph: fx.GraphModule, path: str) -> int:
        """The position of the last node in the model's order that runs inside submodule `path` (-1: none)."""
        positions = [index for index, node in enumerate(graph.graph.nodes) if _inside(node, path)]
        return max(positions, default=-1)

    def _bounds(self, model: nn.Module, cut: Sequence[str]) -> tuple[list[str], list[int]]:
        """The cuts' names and positions (after which node each stage ends), in the model's order, marks included."""
        known = dict(model.named_modules())
        ends: dict[int, str] = {}
        for path in cut:
            if not isinstance(path, str) or path not in known or not path:
                children = ", ".join(child for child, _ in model.named_children())
                raise ConfigError(f"model {self.name!r}: cut {path!r} is not a submodule of the model "
                                  f"(its children: {children}; a deeper one is named like 'layer3.1')")
            end = self.end_of(self.graph, path)
            if end < 0:
                raise ConfigError(f"model {self.name!r}: cut {path!r} names a submodule its forward never calls")
            if end in ends:
                raise ConfigError(f"model {self.name!r}: cuts {ends[end]!r} and {path!r} end at the same place")
            ends[end] = path
        marks = [index for index, node in enumerate(self.nodes) if is_marker(node)]
        for number, index in enumerate(marks):
            ends.setdefault(index, f"mark{number}")
        if not ends:
            raise ConfigError(f"model {self.name!r}: no cut (name submodules in cut = [...] or call dni.cut_here() in forward)")
        positions = sorted(ends)
        return [ends[index] for index in positions], positions

    def _piece_of(self, node: fx.Node) -> int:
        if node.op == "placeholder":
            return -1
        if node.op == "output":
            return self.count - 1
        if node.op == "get_attr":  # read where it is used; `_check_parameters` refuses one used in two stages
            return min(self._piece_of(user) for user in node.users)
        return sum(self.position[node] > bound for bound in self.bounds)

    def _check_inputs_and_output(self) -> None:
        placeholders = [node for node in self.nodes if node.op == "placeholder"]
        if len(placeholders) != 1:
            raise ConfigError(f"model {self.name!r}: forward takes {len(placeholders)} inputs; a cut model takes one, "
                              "the data (a model of several inputs can take them as slices of one tensor)")
        late = sorted({self.piece[user] for user in placeholders[0].users if self.piece[user] > 0})
        if late:
            raise ConfigError(f"model {self.name!r}: the data is used after the first cut (by stage {late[0]}); "
                              "only the first stage takes the data, so cut after its last use")
        output = next(node for node in self.nodes if node.op == "output")
        if not isinstance(output.args[0], fx.Node):
            raise ConfigError(f"model {self.name!r}: forward returns several values; a cut model returns one, the scores "
                              "its loss is taken of")

    def _check_parameters(self, whole: bool) -> None:
        """Each parameter and buffer in one stage only; every stage with something to train."""
        users: dict[int, tuple[str, set[int]]] = {}
        trained: set[int] = set()
        for node, piece in self.piece.items():
            for qualified, tensor in self._tensors_of(node):
                users.setdefault(id(tensor), (qualified, set()))[1].add(piece)
                if isinstance(tensor, nn.Parameter) and tensor.requires_grad:
                    trained.add(piece)
        for qualified, pieces in users.values():
            if len(pieces) > 1:
                first, second = sorted(pieces)[:2]
                raise ConfigError(f"model {self.name!r}: {qualified!r} is used on both sides of a cut (stages {first} "
                                  f"and {second}); each parameter or buffer lives in one stage, so cut elsewhere")
        self.trained = trained  # the stages with parameters to train
        empty = [piece for piece in range(self.count) if piece not in trained]
        if whole and empty:
            raise ConfigError(f"model {self.name!r}: cuts {self.names} leave stage {empty[0]} ({self._span(empty[0])}) "
                              "without parameters to train; cut so that every stage holds some")

    def _tensors_of(self, node: fx.Node) -> Iterator[tuple[str, torch.Tensor]]:
        """The parameters and buffers a node reads, by qualified name."""
        if node.op == "call_module":
            module = self.graph.get_submodule(str(node.target))
            yield from ((f"{node.target}.{key}", value) for key, value in module.named_parameters())
            yield from ((f"{node.target}.{key}", value) for key, value in module.named_buffers())
        elif node.op == "get_attr":
            value = _attribute(self.graph, str(node.target))
            if isinstance(value, torch.Tensor):
                yield str(node.target), value

    def _check_in_place(self) -> None:
        for node, piece in self.piece.items():
            target = node.args[0] if node.args else None
            if isinstance(target, fx.Node) and self.piece[target] != piece and self._writes_in_place(node):
                raise ConfigError(f"model {self.name!r}: {_describe(node)} in stage {piece} writes in place into "
                                  f"{target.name!r}, which stage {self.piece[target]} makes; an in-place write "
                                  "cannot cross a cut (cut elsewhere, or make it not in place)")

    def _writes_in_place(self, node: fx.Node) -> bool:
        if node.op == "call_method":
            return str(node.target).endswith("_") and not str(node.target).startswith("_")
        if node.op == "call_function":
            return bool(node.kwargs.get("inplace")) or getattr(node.target, "__name__", "").endswith("_")
        if node.op == "call_module":
            return bool(getattr(self.graph.get_submodule(str(node.target)), "inplace", False))
        return False

    def _crossings(self) -> list[Crossing]:
        values: dict[tuple[int, int], list[str]] = {}
        for node, piece in self.piece.items():
            for consumer in sorted({self.piece[user] for user in node.users} - {piece}):
                values.setdefault((piece, consumer), []).append(node.name)
        fan_in = {consumer: sum(1 for _, taker in values if taker == consumer) for _, consumer in values}
        return [Crossing(producer, consumer, tuple(names), len(names) > 1 or fan_in[consumer] > 1)
                for (producer, consumer), names in sorted(values.items(), key=lambda item: (item[0][1], item[0][0]))]

    def _check_each_stage_feeds_another(self) -> None:
        for piece in range(self.count - 1):
            if not self.outputs(piece):
                raise ConfigError(f"model {self.name!r}: nothing stage {piece} ({self._span(piece)}) makes is used "
                                  "after it; cut elsewhere")

    def _span(self, piece: int) -> str:
        start = "the input" if piece == 0 else f"after {self.names[piece - 1]!r}"
        end = f"up to {self.names[piece]!r}" if piece < len(self.names) else "to the output"
        return f"{start} {end}"

    def value_shapes(self, data_shape: Shape) -> dict[str, Shape]:
        """The per-example shape of every value that crosses a cut, from one run of the model in eval mode on a
        batch of zeros (once per data shape); a value that is no batch of floats is refused, naming it."""
        if tuple(data_shape) not in self._shapes:
            self._shapes[tuple(data_shape)] = self._value_shapes(tuple(data_shape))
        return self._shapes[tuple(data_shape)]

    def _value_shapes(self, data_shape: Shape) -> dict[str, Shape]:
        modes = {module: module.training for module in self.graph.modules()}
        self.graph.eval()
        try:
            with torch.no_grad():
                ShapeProp(self.graph).propagate(torch.zeros(2, *data_shape))
        except Exception as error:  # the model's own code failing on the job's data shape
            raise ConfigError(f"model {self.name!r} does not run on data of shape {list(data_shape)}: "
                              f"{type(error).__name__}: {error}") from error
        finally:
            for module, training in modes.items():
                module.training = training
        shapes = {}
        for crossing in self.crossings:
            for value in crossing.values:
                meta = self.by_name[value].meta.get("tensor_meta")
                if not (hasattr(meta, "shape") and len(meta.shape) >= 2 and meta.shape[0] == 2 and meta.dtype.is_floating_point):
                    raise ConfigError(f"model {self.name!r}: {value!r} crosses into stage {crossing.consumer}, but it is not "
                                      "a batch of floats with an example dimension first; cut where only such values cross")
                shapes[value] = tuple(int(size) for size in meta.shape[1:])
        return shapes

    def body(self, stage: int) -> fx.GraphModule:
        """Stage `stage`'s own operations as a GraphModule: it takes the values of its input crossings (in their order)
        and returns every value its output crossings carry (in their order, each once) or, for the last, the output."""
        graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        for crossing in self.inputs(stage):
            for value in crossing.values:
                env[self.by_name[value]] = graph.placeholder(value)
        for node in self.nodes:
            if self.piece.get(node) == stage and node.op not in ("placeholder", "output"):
                env[node] = graph.node_copy(node, env.__getitem__)
        if stage == self.count - 1:
            output = next(node for node in self.nodes if node.op == "output")
            graph.output(env[output.args[0]])
        else:
            graph.output(tuple(env[self.by_name[value]] for value in self.sent(stage)))
        return fx.GraphModule(self.graph, graph, f"stage{stage}")

    def sent(self, stage: int) -> list[str]:
        """The values stage `stage` sends on any output crossing, each once, in the order they first appear."""
        return list(dict.fromkeys(value for crossing in self.outputs(stage) for value in crossing.values))


def _inside(node: fx.Node, path: str) -> bool:
    """Whether a node runs inside submodule `path` (or is a call of it)."""
    stack: dict[str, Any] = node.meta.get("nn_module_stack") or {}
    called = [qualified for qualified, _ in stack.values()]
    if node.op in ("call_module", "get_attr"):
        called.append(str(node.target))
    return any(name == path or name.startswith(path + ".") for name in called)


def _attribute(root: nn.Module, target: str) -> Any:
    value: Any = root
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _describe(node: fx.Node) -> str:
    how: Callable[[], str] = {
        "call_module": lambda: f"module {node.target!r}",
        "call_method": lambda: f".{node.target}()",
    }.get(node.op, lambda: f"{getattr(node.target, '__name__', node.target)}()")
    return f"{how()} ({node.name!r})"
