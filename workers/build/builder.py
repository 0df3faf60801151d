"""Building one stage, identically wherever it is built: its module, its block and its synthesizer.

Workers, the coordinator's up-front shape check, the single-process runners and the tests' references all build
through `build_stage`, so a seed gives the same weights everywhere. A job whose messages carry chunks of a
sequence (`over_steps`) makes every stage but the last a recurrent core (`dni.workers.stage.recurrent`) and the last a
module applied at every step; any other job's stages are modules applied once per batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, cast

import torch
from torch import nn

from dni.errors import ConfigError
from dni.graph import DATA, join_shape
from dni.spec import Mode, OptimizerSpec, StageAssignment, StageSpec, topology_of
from dni.workers.stage.blocks import Block, Outputs, PerStep, per_step
from dni.workers.stage.compute import StageCompute
from dni.workers.build.contracts import Shape, call_stage
from dni.workers.stage.recurrent import RECURRENT_MODES, Recurrent, RecurrentCore, linear_synthesizer, resolve_core
from dni.workers.build.registry import (STAGE_ARGUMENTS, SYNTHESIZER_ARGUMENTS, UnknownBuilderError, check_params, resolve_stage,
                                  resolve_synthesizer)
from dni.workers.stage.timing import Timeline

__all__ = ["StageModules", "assigned_stage", "build_stage", "build_stages", "output_shape_of", "output_shapes_of",
           "stage_seed"]


@dataclass
class StageModules:
    """A built stage: its module, how it is applied (None: once per batch), the synthesizers of its output edges
    (by edge name), its output shape, the shape it takes (its inputs joined) and what each output edge carries
    (its output, or the edge's own where the module makes one per edge: then `output_shape` is the first's)."""
    module: nn.Module
    synthesizers: dict[str, nn.Module]
    output_shape: Shape
    block: Optional[Block] = None
    input_shape: Shape = ()
    edge_shapes: dict[str, Shape] = field(default_factory=dict)

    def edge_shape(self, edge: str) -> Shape:
        return self.edge_shapes.get(edge, self.output_shape)

    @property
    def synthesizer(self) -> Optional[nn.Module]:
        """The synthesizer of a stage's one output edge (the first, where it has several)."""
        return next(iter(self.synthesizers.values()), None)


def stage_seed(seed: int, index: int) -> int:
    return seed * 1009 + index


def build_stage(spec: StageSpec, *, index: int, input_shape: Shape, mode: Mode, num_classes: int, seed: int,
                is_last: bool, device: str = "cpu", over_steps: bool = False, optimizer: Optional[OptimizerSpec] = None,
                discount: float = 1.0, outputs: Sequence[str] = ("output",)) -> StageModules:
    """The stage's module, and a synthesizer per output edge (`outputs`, in that order) when the mode uses them
    (never for a head).

    `input_shape` is what the module takes (its inputs joined); with `over_steps`, one step's. `optimizer` and
    `discount` are a recurrent core's synthesizer over time's. The job's parameters are checked against each
    builder's signature first (ConfigError).
    """
    torch.manual_seed(stage_seed(seed, index))
    where = f"stage {index} ({spec.kind})"
    recurrent = over_steps and not is_last
    if recurrent and mode not in RECURRENT_MODES:
        raise ConfigError(f"{where}: a recurrent stage trains in {', '.join(m.value for m in RECURRENT_MODES)}, "
                          f"not {mode.value}")
    builder = resolve_core(spec.kind) if recurrent else resolve_stage(spec.kind)
    check_params(builder, spec.params, where, STAGE_ARGUMENTS)
    module = builder(tuple(input_shape), **spec.params).to(device)
    block: Optional[Block] = None
    edge_shapes: dict[str, Shape] = {}
    if recurrent:
        core = cast(RecurrentCore, module)
        output_shape = _per_step_shape(module, input_shape, device, lambda x: core(x, core.initial_state(2, x.device))[0])
        over_time = linear_synthesizer(core.state_size).to(device) if mode.uses_synthesizer else None
        block = Recurrent(module, over_time, optimizer=optimizer or OptimizerSpec(), discount=discount)
    elif over_steps:
        output_shape = _per_step_shape(module, input_shape, device, lambda x: per_step(module, x))
        block = PerStep(module)
    else:
        probed = output_shapes_of(module, input_shape, device)
        edge_shapes = _per_edge_shapes(probed, outputs, where)
        output_shape = probed[0]
    synthesizers = {}
    if mode.uses_synthesizer and not is_last:
        synthesizer_builder = resolve_synthesizer(spec.synthesizer.kind)
        check_params(synthesizer_builder, spec.synthesizer.params, f"{where}, synthesizer {spec.synthesizer.kind}", SYNTHESIZER_ARGUMENTS)
        for edge in outputs:
            shape = edge_shapes.get(edge, output_shape)
            synthesizers[edge] = synthesizer_builder(
                shape,
                (1,) if mode.synthetic_loss else shape,
                num_classes if mode.conditioned else 0,
                not mode.synthetic_loss,  # a squared output starting at zero could never move
                **spec.synthesizer.params,
            ).to(device)
    return StageModules(module, synthesizers, output_shape, block, tuple(input_shape), edge_shapes)


def _per_edge_shapes(shapes: list[Shape], outputs: Sequence[str], where: str) -> dict[str, Shape]:
    """Each output edge's shape, where the module returns one output per edge."""
    if len(shapes) == 1:
        return {}
    if len(shapes) != len(outputs):
        raise ConfigError(f"{where}: the module returns {len(shapes)} outputs for its {len(outputs)} output edges")
    return dict(zip(outputs, shapes))


def assigned_stage(config: StageAssignment, device: str, timeline: Timeline) -> tuple[StageCompute, StageModules]:
    """The stage a worker serves for `config`, on `device`, and what was built for it (its shapes)."""
    outputs = tuple(edge.name for edge in config.outputs)
    modules = build_stage(config.spec, index=config.index, input_shape=config.input_shape, mode=config.mode,
                          num_classes=config.num_classes, seed=config.seed, is_last=config.is_last, device=device,
                          over_steps=config.truncation > 0, optimizer=config.optimizer, discount=config.discount,
                          outputs=outputs)
    compute = StageCompute(modules.block or modules.module, modules.synthesizers or None, mode=config.mode,
                           optimizer=config.optimizer, inputs=[DATA if edge.peer < 0 else edge.name for edge in config.inputs],
                           outputs=outputs or None, join=config.join, loss=config.loss if config.is_last else None,
                           loss_weight=config.loss_weight, num_classes=config.num_classes, window=config.window,
                           cuda_graphs=config.cuda_graphs, timeline=timeline,
                           name=f"{config.where} ({config.spec.kind})")
    return compute, modules


def build_stages(stages: Sequence[StageSpec], *, input_shape: Shape, mode: Mode, num_classes: int, seed: int,
                device: str = "cpu", over_steps: bool = False, optimizer: Optional[OptimizerSpec] = None,
                discount: float = 1.0) -> list[StageModules]:
    """Every stage of a job in one process, by index, each built (in the graph's order, `dni.spec.topology_of`) for
    its inputs' output shapes joined; a head for its own classes (its `num_classes`, else the data's).

    A stage that does not fit its inputs raises a ConfigError naming the stage and the shapes.
    """
    topology = topology_of(stages)
    built: dict[int, StageModules] = {}
    for index in topology.order():
        spec, sources = stages[index], topology.inputs[index]
        where = topology.describe(index) if not topology.chain else f"stage {index}"
        shapes = [tuple(input_shape) if source < 0 else built[source].edge_shape(topology.names[index]) for source in sources]
        shape = join_shape(spec.join, shapes, where)
        head = index in topology.heads
        try:
            built[index] = build_stage(spec, index=index, input_shape=shape, mode=mode,
                                       num_classes=(spec.num_classes or num_classes) if head else num_classes, seed=seed,
                                       is_last=head, device=device, over_steps=over_steps, optimizer=optimizer,
                                       discount=discount, outputs=[topology.names[c] for c in topology.consumers(index)])
        except UnknownBuilderError as error:
            raise ConfigError(f"{where}: {error}") from error
        except ConfigError:  # parameters that do not fit the builder: the message names the stage already
            raise
        except (TypeError, ValueError, RuntimeError) as error:
            takes = " and ".join(f"stage {'data' if source < 0 else source}" for source in sources)
            raise ConfigError(
                f"{where} ({spec.kind} {spec.params}, synthesizer {spec.synthesizer.kind}) does not fit "
                f"its input of shape {list(shape)} (the output of {takes}): {error}"
            ) from error
    return [built[index] for index in range(len(stages))]


def output_shape_of(module: nn.Module, input_shape: Shape, device: str = "cpu") -> Shape:
    """Per-example output shape, found by running the module in eval mode on a dummy batch."""
    return output_shapes_of(module, input_shape, device)[0]


def output_shapes_of(module: nn.Module, input_shape: Shape, device: str = "cpu") -> list[Shape]:
    """Per-example shape of each output (one, or one per output edge), found by running the module in eval mode
    on a dummy batch."""
    probe = torch.zeros(2, *input_shape, device=device)
    labels = torch.zeros(2, dtype=torch.int64, device=device)
    outputs = _probed(module, lambda: call_stage(module, probe, labels))
    return [tuple(output.shape[1:]) for output in (outputs if isinstance(outputs, tuple) else (outputs,))]


def _per_step_shape(module: nn.Module, input_shape: Shape, device: str,
                    call: Callable[[torch.Tensor], torch.Tensor]) -> Shape:
    """A per-step module's output shape per step, found on a dummy chunk of one step."""
    probe = torch.zeros(2, 1, *input_shape, device=device)
    output = _probed(module, lambda: call(probe))
    assert isinstance(output, torch.Tensor)
    return tuple(output.shape[2:])


def _probed(module: nn.Module, call: Callable[[], Outputs]) -> Outputs:
    was_training = module.training
    module.eval()
    with torch.no_grad():
        output = call()
    module.train(was_training)
    return output
