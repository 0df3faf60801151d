"""The vocabulary both sides of the wire share: modes, a job's stages, what a worker is told, and their checks.

The coordinator reads these from job files and flags; a worker receives a
`StageAssignment` in its `configure` request and checks it again, since it may
run elsewhere and trust no peer. Each concept has one validator here, used on
both sides, so a bad setting gets the same message wherever it is caught.

A `StageSpec` is what a job file says about one stage (its kind, parameters,
synthesizer, device and, for a worker started elsewhere, its address); a
`StageAssignment` is everything one worker is told to serve it: the spec, its
place in the pipeline, its neighbours' sockets and the job's settings.

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
from typing import Any, Optional

from dni.errors import ConfigError

__all__ = [
    "COORDINATOR_TIMEOUT", "DEVICE_PATTERN", "EXIT_COORDINATOR_SILENT", "EXIT_STOPPED", "LOSS_NAMES",
    "MAX_LINK_DELAY_MS", "MODE_NAMES", "NONFINITE_POLICIES", "OPTIMIZERS", "STEP_LOSS_NAMES", "Mode", "OptimizerSpec", "PixelScaling",
    "StageAssignment", "StageSpec", "SynthesizerSpec", "check_device", "check_discount", "check_link_delay", "check_loss", "check_mode",
    "check_nonfinite", "check_optimizer", "check_pixels", "check_positive", "check_type",
]

OPTIMIZERS = ("adam", "sgd")
COORDINATOR_TIMEOUT = 20.0  # seconds: a worker ends its job when the coordinator has been silent this long
EXIT_STOPPED = 0  # a --once worker whose job was stopped by its coordinator
EXIT_COORDINATOR_SILENT = 3  # a --once worker that ended its job because the coordinator fell silent
NONFINITE_POLICIES = ("reject", "count")  # a tensor with NaN/Inf: refuse the message, or count it and go on
DEVICE_PATTERN = re.compile(r"^(cpu|auto|cuda(:\d+)?)$")
LOSS_NAMES = ("cross_entropy", "multi_margin")  # the built-in losses (dni.workers.losses); else package.module:function
STEP_LOSS_NAMES = ("bits", "cross_entropy")  # a sequence job's per-step losses (dni.workers.step_losses), in bits
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


@dataclass(frozen=True)
class OptimizerSpec:
    """A stage's optimiser: Adam or SGD (`OPTIMIZERS`) and its learning rate, the same for module and synthesizer."""
    name: str = "adam"
    lr: float = 3e-5


@dataclass(frozen=True)
class PixelScaling:
    """How the first stage makes the float32 batch from the uint8 pixels it is sent (`dni.pixels`).

    Pixels cross the wire as bytes, a quarter of their float32 size; the stage then
    applies the coordinator's own normalisation (coordinator/normalize.py): divided by
    255 unless `divide` is false (normalize = "none"), then, per channel, less `mean`
    and over `std` where they are given (standardize, or explicit statistics).
    """
    divide: bool = True
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()


@dataclass(frozen=True)
class StageAssignment:
    """Everything one worker is told, in `configure`, to serve one stage of one job."""
    job: str
    index: int
    num_stages: int
    spec: StageSpec
    mode: Mode
    input_shape: tuple[int, ...]
    num_classes: int
    optimizer: OptimizerSpec
    seed: int
    window: int
    threads: int
    coordinator: str
    upstream: Optional[str] = None  # the upstream worker's backward socket, where input gradients go
    downstream: Optional[str] = None  # the downstream worker's forward socket, where activations go
    record_spans: bool = False
    nonfinite: str = "reject"
    restore: Optional[str] = None  # a checkpoint file to start from
    loss: str = "cross_entropy"  # the last stage's per-example loss (missing on the wire: the default)
    link_delay_ms: float = 0.0  # emulated link delay: every data message this stage sends leaves this late (missing: 0)
    profile: bool = False  # run the stage under cProfile; its `metrics` reply then carries the hottest functions
    cuda_graphs: bool = True  # on a CUDA device, replay the training passes as CUDA graphs (see workers/graphs.py)
    truncation: int = 0  # a sequence job's chunk length T (messages carry chunks of at most T steps); 0: feed-forward
    discount: float = 1.0  # a sequence job: the weight of the synthetic gradient at each chunk's end
    pixels: Optional[PixelScaling] = None  # the first stage of a uint8 dataset: its batches come as pixels (missing: floats)

    @property
    def is_first(self) -> bool:
        return self.index == 0

    @property
    def is_last(self) -> bool:
        return self.index == self.num_stages - 1

    def to_wire(self) -> dict[str, Any]:
        wire = asdict(self)
        del wire["spec"]["address"]  # where the worker lives is the coordinator's business, not the worker's
        wire["mode"] = self.mode.value
        wire["input_shape"] = list(self.input_shape)
        if self.pixels is not None:  # lists, as msgpack gives them back
            wire["pixels"] = {"divide": self.pixels.divide, "mean": list(self.pixels.mean), "std": list(self.pixels.std)}
        return wire

    @classmethod
    def from_wire(cls, wire: Any) -> "StageAssignment":
        if not isinstance(wire, dict):
            raise ConfigError("stage config must be a map")
        try:
            spec, optimizer = wire["spec"], wire["optimizer"]
            assignment = cls(
                job=check_type("job", wire["job"], str),
                index=check_type("index", wire["index"], int),
                num_stages=check_type("num_stages", wire["num_stages"], int),
                spec=StageSpec(
                    kind=check_type("kind", spec["kind"], str),
                    params=check_type("params", spec["params"], dict),
                    synthesizer=SynthesizerSpec(**spec["synthesizer"]),
                    device=check_device(check_type("device", spec["device"], str)),
                ),
                mode=check_mode(wire["mode"]),
                input_shape=tuple(check_type("input_shape", wire["input_shape"], list)),
                num_classes=check_type("num_classes", wire["num_classes"], int),
                optimizer=check_optimizer(optimizer.get("name"), optimizer.get("lr"), set(optimizer)),
                seed=check_type("seed", wire["seed"], int),
                window=check_type("window", wire["window"], int),
                threads=check_type("threads", wire["threads"], int),
                coordinator=check_type("coordinator", wire["coordinator"], str),
                upstream=wire.get("upstream"),
                downstream=wire.get("downstream"),
                record_spans=bool(wire.get("record_spans", False)),
                nonfinite=check_nonfinite(wire.get("nonfinite", "reject")),
                restore=wire.get("restore"),
                loss=check_loss(wire.get("loss", "cross_entropy"), sequence=bool(wire.get("truncation", 0))),
                link_delay_ms=check_link_delay(wire.get("link_delay_ms", 0.0)),
                profile=check_type("profile", wire.get("profile", False), bool),
                cuda_graphs=check_type("cuda_graphs", wire.get("cuda_graphs", True), bool),
                truncation=check_type("truncation", wire.get("truncation", 0), int),
                discount=float(check_type("discount", wire.get("discount", 1.0), float)),
                pixels=check_pixels(wire.get("pixels")),
            )
        except (KeyError, TypeError, AttributeError) as error:
            raise ConfigError(f"stage config is incomplete or malformed: {error}") from error
        assignment.validate()
        return assignment

    def validate(self) -> None:
        if not 0 <= self.index < self.num_stages:
            raise ConfigError(f"index {self.index} is outside 0..{self.num_stages - 1}")
        for name in ("window", "threads"):
            check_positive(name, getattr(self, name))
        if not all(isinstance(size, int) and size > 0 for size in self.input_shape):
            raise ConfigError(f"input_shape must be positive integers, got {list(self.input_shape)}")
        check_link_delay(self.link_delay_ms)
        if self.truncation < 0:
            raise ConfigError(f"truncation must not be negative (0: a feed-forward job), got {self.truncation}")
        check_discount(self.discount)
        if self.restore is not None and not isinstance(self.restore, str):
            raise ConfigError("restore must be a checkpoint path")
        if (self.upstream is None) != self.is_first or (self.downstream is None) != self.is_last:
            raise ConfigError("upstream/downstream addresses do not match the stage's position")
        if self.pixels is not None and (not self.is_first or self.truncation):
            raise ConfigError("pixels: only the first stage of a feed-forward job is sent uint8 pixels")
        if self.pixels is not None and self.pixels.mean and len(self.pixels.mean) != self.input_shape[0]:
            raise ConfigError(f"pixels: {len(self.pixels.mean)} means and stds for examples of {self.input_shape[0]} "
                              f"channels (shape {list(self.input_shape)})")


# -- one check per concept, for job files and configure requests alike ---------------------

def check_type(name: str, value: Any, kind: type) -> Any:
    """`value` if it is a `kind` (a bool is no number: TOML and msgpack keep them apart, so must we; an int is a
    float, as a job file's `5` for 5.0)."""
    number = kind is float and isinstance(value, int)
    if not (isinstance(value, kind) or number) or (kind in (int, float) and isinstance(value, bool)):
        raise ConfigError(f"{name} must be {kind.__name__}, got {value!r:.60}")
    return value


def check_link_delay(value: Any) -> float:
    """The emulated link delay in milliseconds: a finite, non-negative number (a job file's 5 means 5.0), at most
    MAX_LINK_DELAY_MS: a held message counts as in flight, so the coordinator's stall check waits for it."""
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0):
        raise ConfigError(f"link_delay_ms must be a finite number of milliseconds, 0 or more, got {value!r:.60}")
    if value > MAX_LINK_DELAY_MS:
        raise ConfigError(f"link_delay_ms must be at most {MAX_LINK_DELAY_MS} (an emulated hop, not a pause), "
                          f"got {value:g}")
    return float(value)


def check_positive(name: str, value: int) -> int:
    if value < 1:
        raise ConfigError(f"{name} must be at least 1, got {value}")
    return value


def check_mode(value: Any) -> Mode:
    if value not in MODE_NAMES:
        raise ConfigError(f"mode {value!r:.40} is not one of {', '.join(MODE_NAMES)}")
    return Mode(value)


def check_optimizer(name: Any, lr: Any, keys: set[str]) -> OptimizerSpec:
    unknown = keys - {"name", "lr"}
    if unknown:
        raise ConfigError(f"optimizer has unknown settings {sorted(unknown)}; known: name, lr")
    if name not in OPTIMIZERS:
        raise ConfigError(f"optimizer.name {name!r} is not one of {', '.join(OPTIMIZERS)}")
    if not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and math.isfinite(lr) and lr > 0):
        raise ConfigError(f"optimizer.lr must be a positive number, got {lr!r}")
    return OptimizerSpec(name, lr)


def check_nonfinite(value: Any) -> str:
    if value not in NONFINITE_POLICIES:
        raise ConfigError(f"nonfinite {value!r:.40} is not one of {', '.join(NONFINITE_POLICIES)}")
    return value


def check_loss(value: Any, sequence: bool = False) -> str:
    """A built-in loss name or an import path; whether the path imports is known only where it is resolved.
    A sequence job's loss is one of its per-step losses (`STEP_LOSS_NAMES`)."""
    if sequence:
        if value not in STEP_LOSS_NAMES:
            raise ConfigError(f"a sequence job's loss {value!r:.60} is not one of {', '.join(STEP_LOSS_NAMES)}")
        return value
    if not (isinstance(value, str) and (value in LOSS_NAMES or IMPORT_PATH.match(value))):
        raise ConfigError(f"loss {value!r:.60} is not one of {', '.join(LOSS_NAMES)} nor an import path package.module:function")
    return value


def check_discount(value: float) -> float:
    """The synthetic gradient's weight at a chunk's end: from 0 (truncated BPTT) to 1 (the paper's)."""
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ConfigError(f"discount must lie in 0..1, got {value!r:.60}")
    return value


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


def check_device(value: str) -> str:
    """cpu, auto, cuda or cuda:N; whether that device exists is known only on the worker that uses it."""
    if not DEVICE_PATTERN.match(value):
        raise ConfigError(f"device {value!r} is not one of cpu, cuda, cuda:N, auto")
    return value
