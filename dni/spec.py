"""The vocabulary both sides of the wire share: modes, a job's stages, what a worker is told, and their checks.

The coordinator reads these from job files and flags; a worker receives a
`StageAssignment` in its `configure` request and checks it again, since it may
run elsewhere and trust no peer. Each concept has one validator here, used on
both sides, so a bad setting gets the same message wherever it is caught.

A `StageSpec` is what a job file says about one stage (its kind, parameters,
synthesizer, device and, for a worker started elsewhere, its address); a
`StageAssignment` is everything one worker is told to serve it: the spec, its
place in the graph, its edges (with the sockets at their other ends) and the job's settings.

Modes follow the reference experiment (Jaderberg et al. 2017, as written up in
its single-process TensorFlow reference):

- backprop: update-locked; a stage updates only when the true gradient of the
  loss w.r.t. its output has come back, and takes no new batch before that.
- sg: a stage's synthesizer predicts dL/d(output); the stage updates at once
  with that prediction backpropagated through itself; the same backward pass
  gives dL/d(input), the training target of the previous synthesizer
  (bootstrapping). The last hidden stage's target is the true gradient.
- cdni: sg with the one-hot label concatenated to the synthesizer input.
- sl: synthetic loss; the synthesizer predicts a non-negative per-example loss
  (a squared output) and the stage follows its gradient; targets are the next
  synthesizer's prediction, and the true per-example loss for the last one.
- no_bprop: hidden stages never learn; only the last stage does.
"""
from __future__ import annotations

import enum
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

from dni.errors import ConfigError
from dni.graph import JOINS, Topology, join_shape, stage_label
from dni.settings import check_type, setting, settings_of

__all__ = [
    "COORDINATOR_TIMEOUT", "DEVICE_PATTERN", "EXIT_COORDINATOR_SILENT", "EXIT_STOPPED", "LOSS_NAMES",
    "MAX_LINK_DELAY_MS", "MODE_NAMES", "NONFINITE_POLICIES", "OPTIMIZERS", "WORKER_SETTINGS", "Mode",
    "Edge", "OptimizerSpec", "PixelScaling", "StageAssignment", "StageSpec", "SynthesizerSpec", "WorkerSettings", "check_at_least_one", "check_device",
    "check_discount", "check_join", "check_labels", "check_link_delay", "check_loss", "check_lr", "check_mode", "check_nonfinite", "check_not_negative",
    "check_optimizer", "check_pixels", "check_positive", "check_truncation", "check_weight", "read_optimizer", "topology_of",
]

OPTIMIZERS = ("adam", "sgd")
COORDINATOR_TIMEOUT = 20.0  # seconds: a worker ends its job when the coordinator has been silent this long
EXIT_STOPPED = 0  # a --once worker whose job was stopped by its coordinator
EXIT_COORDINATOR_SILENT = 3  # a --once worker that ended its job because the coordinator fell silent
NONFINITE_POLICIES = ("reject", "count")  # a tensor with NaN/Inf: refuse the message, or count it and go on
DEVICE_PATTERN = re.compile(r"^(cpu|auto|cuda(:\d+)?)$")
LOSS_NAMES = ("cross_entropy", "multi_margin", "bits")  # the built-in losses (dni.workers.stage.losses); else package.module:function
IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


class Mode(str, enum.Enum):
    """What a hidden stage does with its synthesizer (see the module docstring)."""

    BACKPROP = "backprop"
    SG = "sg"
    CDNI = "cdni"
    SL = "sl"
    NO_BPROP = "no_bprop"

    @property
    def uses_synthesizer(self) -> bool:
        return self in (Mode.SG, Mode.CDNI, Mode.SL)

    @property
    def hidden_stages_learn(self) -> bool:
        return self is not Mode.NO_BPROP

    @property
    def input_gradient(self) -> bool:
        """A stage sends dL/d(input) upstream: the true gradient (backprop) or its synthetic estimate (sg, cdni)."""
        return self in (Mode.BACKPROP, Mode.SG, Mode.CDNI)

    @property
    def conditioned(self) -> bool:
        return self is Mode.CDNI

    @property
    def synthetic_loss(self) -> bool:
        return self is Mode.SL

    @property
    def locked(self) -> bool:
        return self is Mode.BACKPROP


MODE_NAMES = tuple(mode.value for mode in Mode)
MAX_LINK_DELAY_MS = 5000  # a held message counts as in flight, so a longer hold would silence the stall check


@dataclass(frozen=True)
class SynthesizerSpec:
    kind: str = "mlp"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StageSpec:
    """One stage as a job file describes it."""
    kind: str
    params: dict[str, Any] = field(default_factory=dict)
    synthesizer: SynthesizerSpec = field(default_factory=SynthesizerSpec)
    device: str = "cpu"
    address: Optional[str] = None  # a worker started elsewhere (`dni worker`); None: a local process
    name: Optional[str] = None  # how other stages name it (None: stage<i>)
    inputs: Optional[tuple[str, ...]] = None  # the stages (or "data") whose outputs it takes; None: the stage before
    join: str = "cat"  # how several inputs become one (`dni.graph.JOINS`)
    loss: Optional[str] = None  # a head's loss (a stage with one is a head); None: a hidden stage, or the job's loss
    loss_weight: float = 1.0  # a head's share of the total loss
    labels: str = ""  # a head's labels: "" the data's, else package.module:function of the data's labels
    num_classes: int = 0  # a head's classes (0: the data's)


def topology_of(stages: Sequence[StageSpec]) -> Topology:
    """The graph that stages' names, inputs and losses make (`dni.graph`); ConfigError where it does not hold."""
    return Topology.of([stage.name for stage in stages], [stage.inputs for stage in stages],
                       [stage.loss is not None for stage in stages])


@dataclass(frozen=True)
class Edge:
    """One edge of a stage as its worker is told it: the stage at its other end (its index, -1 for the data, and
    name), that stage's socket (an input edge: its backward socket, where input gradients go, None for the data; an
    output edge: its forward socket) and, on an input edge, the per-example shape that comes along it."""
    name: str
    peer: int
    address: Optional[str]
    shape: tuple[int, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        return {"name": self.name, "peer": self.peer, "address": self.address, "shape": list(self.shape)}

    @classmethod
    def from_wire(cls, wire: Any) -> "Edge":
        if not isinstance(wire, dict):
            raise ConfigError(f"an edge must be a map, got {wire!r:.60}")
        address = wire.get("address")
        if address is not None and not isinstance(address, str):
            raise ConfigError(f"an edge's address must be a string, got {address!r:.60}")
        return cls(check_type("edge name", wire["name"], str), check_type("edge peer", wire["peer"], int), address,
                   tuple(check_type("edge shape", wire.get("shape", []), list)))


@dataclass(frozen=True)
class OptimizerSpec:
    """A stage's optimiser: Adam or SGD (`OPTIMIZERS`) and its learning rate, the same for module and synthesizer."""
    name: str = "adam"
    lr: float = 3e-5


# -- one check per concept, for job files and configure requests alike ---------------------
# A setting's check takes (value, name): the name is the one its reader shows, a job file's key or a flag.

def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_link_delay(value: Any, name: str = "link_delay_ms") -> float:
    """The emulated link delay in milliseconds: a finite, non-negative number (a job file's 5 means 5.0), at most
    MAX_LINK_DELAY_MS: a held message counts as in flight, so the coordinator's stall check waits for it."""
    if not (_is_number(value) and math.isfinite(value) and value >= 0):
        raise ConfigError(f"{name} must be a finite number of milliseconds, 0 or more, got {value!r:.60}")
    if value > MAX_LINK_DELAY_MS:
        raise ConfigError(f"{name} must be at most {MAX_LINK_DELAY_MS} (an emulated hop, not a pause), got {value:g}")
    return float(value)


def check_positive(name: str, value: int) -> int:
    if value < 1:
        raise ConfigError(f"{name} must be at least 1, got {value}")
    return value


def check_at_least_one(value: Any, name: str) -> int:
    """A count that cannot be zero: an int of at least 1."""
    return check_positive(name, check_type(name, value, int))


def check_not_negative(value: Any, name: str) -> int:
    """A count whose 0 means none (or, where its help says so, a default): an int of at least 0."""
    if check_type(name, value, int) < 0:
        raise ConfigError(f"{name} must not be negative, got {value}")
    return value


def check_mode(value: Any, name: str = "mode") -> Mode:
    if value not in MODE_NAMES:
        raise ConfigError(f"{name} {value!r:.40} is not one of {', '.join(MODE_NAMES)}")
    return Mode(value)


def check_lr(value: Any, name: str) -> float:
    if not (_is_number(value) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be a positive number, got {value!r}")
    return value


def check_optimizer(name: Any, lr: Any, keys: set[str]) -> OptimizerSpec:
    unknown = keys - {"name", "lr"}
    if unknown:
        raise ConfigError(f"optimizer has unknown settings {sorted(unknown)}; known: name, lr")
    if name not in OPTIMIZERS:
        raise ConfigError(f"optimizer.name {name!r} is not one of {', '.join(OPTIMIZERS)}")
    return OptimizerSpec(name, check_lr(lr, "optimizer.lr"))


def read_optimizer(value: Any, name: str = "optimizer") -> OptimizerSpec:
    """The `[optimizer]` table (name, lr), each key defaulting to `OptimizerSpec`'s."""
    table = check_type(name, value, dict)
    return check_optimizer(table.get("name", OptimizerSpec.name), table.get("lr", OptimizerSpec.lr), set(table))


def check_nonfinite(value: Any, name: str = "nonfinite") -> str:
    if value not in NONFINITE_POLICIES:
        raise ConfigError(f"{name} {value!r:.40} is not one of {', '.join(NONFINITE_POLICIES)}")
    return value


def check_loss(value: Any, name: str = "loss") -> str:
    """A built-in loss name or an import path; whether the path imports is known only where it is resolved."""
    if not (isinstance(value, str) and (value in LOSS_NAMES or IMPORT_PATH.match(value))):
        raise ConfigError(f"{name} {value!r:.60} is not one of {', '.join(LOSS_NAMES)} nor an import path package.module:function")
    return value


def check_join(value: Any, name: str = "join") -> str:
    """How a stage's several inputs become one (`dni.graph.JOINS`)."""
    if value not in JOINS:
        raise ConfigError(f"{name} {value!r:.40} is not one of {', '.join(JOINS)}")
    return value


def check_weight(value: Any, name: str = "loss_weight") -> float:
    """A head's share of the total loss: a positive, finite number."""
    if not (_is_number(value) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be a positive number, got {value!r:.60}")
    return float(value)


def check_labels(value: Any, name: str = "labels") -> str:
    """A head's labels: "" (the data's) or the import path of a function of the data's labels; whether it imports
    and what it returns are checked where the data is (`dni.coordinator.jobs.heads`)."""
    if not (isinstance(value, str) and (value == "" or IMPORT_PATH.match(value))):
        raise ConfigError(f"{name} {value!r:.60} is not an import path package.module:function")
    return value


def check_truncation(value: Any, name: str) -> int:
    """A chunk length T, 0 for a feed-forward job (a sequence job also needs T >= 1: `coordinator/jobs/job.py`)."""
    if check_type(name, value, int) < 0:
        raise ConfigError(f"{name} must not be negative (0: a feed-forward job), got {value}")
    return value


def check_discount(value: Any, name: str = "discount") -> float:
    """The synthetic gradient's weight at a chunk's end: from 0 (truncated BPTT) to 1 (the paper's)."""
    if not (_is_number(value) and math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ConfigError(f"{name} must lie in 0..1, got {value!r:.60}")
    return float(value)


def check_device(value: str) -> str:
    """cpu, auto, cuda or cuda:N; whether that device exists is known only on the worker that uses it."""
    if not DEVICE_PATTERN.match(value):
        raise ConfigError(f"device {value!r} is not one of cpu, cuda, cuda:N, auto")
    return value


def _mode_name(mode: Mode) -> str:
    return mode.value


# -- the settings a worker is told ----------------------------------------------------------

@dataclass(frozen=True)
class PixelScaling:
    """How the first stage makes the float32 batch from the uint8 pixels it is sent (`dni.workers.loop.pixels`).

    Pixels cross the wire as bytes, a quarter of their float32 size; the stage then
    applies the coordinator's own normalisation (coordinator/data/normalize.py): divided by
    255 unless `divide` is false (normalize = "none"), then, per channel, less `mean`
    and over `std` where they are given (standardize, or explicit statistics).
    """
    divide: bool = True
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()


@dataclass(frozen=True)
class WorkerSettings:
    """The job's settings every worker is told as they are: a `Job` has them and so has a `StageAssignment` (both
    derive from this class), so the trainers copy them and `from_wire` reads them row by row (`WORKER_SETTINGS`).
    Settings the coordinator resolves first (threads, num_classes, loss) are the assignment's own fields."""
    mode: Mode = setting(Mode.SG, f"training mode: {', '.join(MODE_NAMES)}", kind=str, check=check_mode, dump=_mode_name,
                         flag=True, choices=MODE_NAMES, wire_required=True)
    optimizer: OptimizerSpec = setting(OptimizerSpec(), "every stage's optimiser: a table of name (adam, sgd) and lr",
                                       kind=dict, check=read_optimizer, dump=asdict, wire_required=True)
    seed: int = setting(0, "seed for weights and data order", flag=True, wire_required=True)
    window: int = setting(4, "batches a stage may run ahead of its true gradients (unlocked modes)", check=check_at_least_one,
                          flag=True, wire_required=True)
    record_spans: bool = setting(False, "record per-worker activity spans (spans.json)", flag=True)
    nonfinite: str = setting("reject", "a tensor with NaN/Inf arriving at a worker: reject the message, or count it",
                             check=check_nonfinite)
    link_delay_ms: float = setting(0.0, "emulated link delay: every data message (activations, targets, batches from and "
                                   "results to the coordinator) leaves its sender this many ms late, held in its queue; "
                                   "control is not delayed", check=check_link_delay, flag=True)
    profile: bool = setting(False, "run every worker under cProfile: summary.json's worker_metrics list each one's hottest "
                            "functions in microseconds per step (slows the run)", flag=True)
    cuda_graphs: bool = setting(True, "CUDA stages replay their training passes as CUDA graphs (a last partial batch runs "
                                "eagerly)")
    truncation: int = setting(0, "sequence jobs (copy, repeat-copy, chars): T, the time steps per chunk, where truncated "
                              "BPTT cuts and the synthesizer over time bridges", check=check_truncation, flag=True)
    discount: float = setting(1.0, "sequence jobs: the weight of the synthetic gradient at each chunk's end (0..1, "
                              "default 1)", check=check_discount, flag=True)


WORKER_SETTINGS = settings_of(WorkerSettings)


@dataclass(frozen=True, kw_only=True)
class StageAssignment(WorkerSettings):
    """Everything one worker is told, in `configure`, to serve one stage of one job: the job's `WorkerSettings` and
    what the coordinator resolved for this stage."""
    job: str
    index: int
    num_stages: int
    spec: StageSpec
    input_shape: tuple[int, ...]  # what the stage's module takes: its inputs joined (`dni.graph.join_shape`)
    num_classes: int
    threads: int
    coordinator: str
    inputs: tuple[Edge, ...] = ()  # where its inputs come from (peer -1: the data, from the coordinator)
    outputs: tuple[Edge, ...] = ()  # where its output goes; none: a head, whose output its loss scores
    name: str = ""
    join: str = "cat"
    restore: Optional[str] = None  # a checkpoint file to start from
    loss: str = "cross_entropy"  # a head's per-example loss (missing on the wire: the default)
    loss_weight: float = 1.0  # a head's share of the total loss
    pixels: Optional[PixelScaling] = None  # a stage fed the data of a uint8 dataset: its batches come as pixels

    @property
    def is_first(self) -> bool:
        """It takes the data (and so sends no gradient back along that edge)."""
        return any(edge.peer < 0 for edge in self.inputs)

    @property
    def is_last(self) -> bool:
        """A head: its output goes nowhere, a loss scores it."""
        return not self.outputs

    @property
    def where(self) -> str:
        """The stage as messages name it."""
        return stage_label(self.index, self.name)

    def to_wire(self) -> dict[str, Any]:
        wire = asdict(self)
        wire["spec"] = {key: wire["spec"][key] for key in ("kind", "params", "synthesizer", "device")}  # the rest is the coordinator's
        wire.update({row.name: row.dump(getattr(self, row.name)) for row in WORKER_SETTINGS})
        wire["input_shape"] = list(self.input_shape)
        wire["inputs"] = [edge.to_wire() for edge in self.inputs]
        wire["outputs"] = [edge.to_wire() for edge in self.outputs]
        if self.pixels is not None:  # lists, as msgpack gives them back
            wire["pixels"] = {"divide": self.pixels.divide, "mean": list(self.pixels.mean), "std": list(self.pixels.std)}
        return wire

    @classmethod
    def from_wire(cls, wire: Any) -> "StageAssignment":
        if not isinstance(wire, dict):
            raise ConfigError("stage config must be a map")
        try:
            assignment = cls(
                job=check_type("job", wire["job"], str),
                index=check_type("index", wire["index"], int),
                num_stages=check_type("num_stages", wire["num_stages"], int),
                spec=_spec_from_wire(wire["spec"]),
                input_shape=tuple(check_type("input_shape", wire["input_shape"], list)),
                num_classes=check_type("num_classes", wire["num_classes"], int),
                threads=check_type("threads", wire["threads"], int),
                coordinator=check_type("coordinator", wire["coordinator"], str),
                inputs=tuple(Edge.from_wire(edge) for edge in check_type("inputs", wire["inputs"], list)),
                outputs=tuple(Edge.from_wire(edge) for edge in check_type("outputs", wire["outputs"], list)),
                name=check_type("name", wire.get("name", ""), str),
                join=check_type("join", wire.get("join", "cat"), str),
                restore=wire.get("restore"),
                loss=wire.get("loss", "cross_entropy"),
                loss_weight=check_type("loss_weight", wire.get("loss_weight", 1.0), float),
                **_settings_from_wire(wire),
                pixels=check_pixels(wire.get("pixels")),
            )
        except (KeyError, TypeError, AttributeError) as error:
            raise ConfigError(f"stage config is incomplete or malformed: {error}") from error
        assignment.validate()
        return assignment

    def validate(self) -> None:
        """What the settings' own checks cannot see: the stage's place and edges, its resolved threads and shape, a
        loss that suits the job's kind."""
        if not 0 <= self.index < self.num_stages:
            raise ConfigError(f"index {self.index} is outside 0..{self.num_stages - 1}")
        check_positive("threads", self.threads)
        if not all(isinstance(size, int) and size > 0 for size in self.input_shape):
            raise ConfigError(f"input_shape must be positive integers, got {list(self.input_shape)}")
        check_loss(self.loss)
        check_weight(self.loss_weight)
        if self.restore is not None and not isinstance(self.restore, str):
            raise ConfigError("restore must be a checkpoint path")
        self._validate_edges()
        if self.pixels is not None and (not self.is_first or self.truncation):
            raise ConfigError("pixels: only the first stage of a feed-forward job (a stage that takes the data) is sent "
                              "uint8 pixels")
        data_shape = next((edge.shape for edge in self.inputs if edge.peer < 0), self.input_shape)
        if self.pixels is not None and self.pixels.mean and len(self.pixels.mean) != data_shape[0]:
            raise ConfigError(f"pixels: {len(self.pixels.mean)} means and stds for examples of {data_shape[0]} "
                              f"channels (shape {list(data_shape)})")

    def _validate_edges(self) -> None:
        if not self.inputs:
            raise ConfigError("a stage needs at least one input edge")
        peers = [edge.peer for edge in self.inputs]
        if len(set(peers)) != len(peers) or any(not -1 <= peer < self.num_stages or peer == self.index for peer in peers):
            raise ConfigError(f"input edges must come from distinct other stages or the data (-1), got {peers}")
        if any((edge.peer < 0) != (edge.address is None) for edge in self.inputs):
            raise ConfigError("an input edge has its producer's address unless it brings the data")
        receivers = [edge.peer for edge in self.outputs]
        if len(set(receivers)) != len(receivers) or any(not 0 <= peer < self.num_stages or peer == self.index or
                                                        edge.address is None for peer, edge in zip(receivers, self.outputs)):
            raise ConfigError(f"output edges must go to distinct other stages, each with an address, got {receivers}")
        if any(not edge.shape or not all(isinstance(size, int) and size > 0 for size in edge.shape) for edge in self.inputs):
            raise ConfigError("every input edge needs a shape of positive integers")
        if join_shape(self.join, [edge.shape for edge in self.inputs], self.where) != tuple(self.input_shape):
            raise ConfigError(f"input_shape {list(self.input_shape)} is not the join of the input edges' shapes")


def _spec_from_wire(spec: dict[str, Any]) -> StageSpec:
    return StageSpec(
        kind=check_type("kind", spec["kind"], str),
        params=check_type("params", spec["params"], dict),
        synthesizer=SynthesizerSpec(**spec["synthesizer"]),
        device=check_device(check_type("device", spec["device"], str)),
    )


def _settings_from_wire(wire: dict[str, Any]) -> dict[str, Any]:
    """Every worker setting, checked; one a newer coordinator added may be missing from an older one's: its default."""
    return {row.name: row.receive(wire[row.name] if row.wire_required else wire.get(row.name, row.default))
            for row in WORKER_SETTINGS}


def check_pixels(value: Any) -> Optional[PixelScaling]:
    """A configure request's `pixels`: absent (float batches), or how to scale uint8 ones; finite means and positive
    stds, one of each per channel, so a peer cannot make the stage divide by zero."""
    if value is None:
        return None
    if not (isinstance(value, dict) and set(value) == {"divide", "mean", "std"}):
        raise ConfigError(f"pixels must be a map of divide, mean and std, got {value!r:.60}")
    mean, std = (check_type(name, value[name], list) for name in ("mean", "std"))
    numbers = all(isinstance(number, (int, float)) and not isinstance(number, bool) and math.isfinite(number)
                  for number in mean + std)
    if not numbers or len(mean) != len(std) or not all(deviation > 0 for deviation in std):
        raise ConfigError(f"pixels: mean and std must be lists of finite numbers of one length, every std above 0, "
                          f"got {mean!r:.40} and {std!r:.40}")
    return PixelScaling(check_type("divide", value["divide"], bool), tuple(map(float, mean)), tuple(map(float, std)))
