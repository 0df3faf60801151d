"""What a worker is told about its stage and its job, agreed with the coordinator up front.

The coordinator sends a StageConfig in the `configure` request; the worker
validates it here so that a bad configuration gets an error naming the field
instead of a crash half-way through a job.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from dni.workers.modes import MODE_NAMES, Mode

OPTIMIZERS = ("adam", "sgd")
NONFINITE_POLICIES = ("reject", "count")  # a tensor with NaN/Inf: refuse the message, or count it and go on


class ConfigError(ValueError):
    """A stage or job setting that cannot be used; the text names the field."""


@dataclass(frozen=True)
class SynthesizerSpec:
    kind: str = "mlp"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StageSpec:
    kind: str
    params: dict[str, Any] = field(default_factory=dict)
    synthesizer: SynthesizerSpec = field(default_factory=SynthesizerSpec)
    device: str = "cpu"


@dataclass(frozen=True)
class OptimizerSpec:
    name: str = "adam"
    lr: float = 3e-5


@dataclass(frozen=True)
class StageConfig:
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
    upstream: Optional[str] = None
    downstream: Optional[str] = None
    record_spans: bool = False
    nonfinite: str = "reject"
    restore: Optional[str] = None  # a checkpoint file to start from

    @property
    def is_first(self) -> bool:
        return self.index == 0

    @property
    def is_last(self) -> bool:
        return self.index == self.num_stages - 1

    def to_wire(self) -> dict[str, Any]:
        wire = asdict(self)
        wire["mode"] = self.mode.value
        wire["input_shape"] = list(self.input_shape)
        return wire

    @classmethod
    def from_wire(cls, wire: Any) -> "StageConfig":
        if not isinstance(wire, dict):
            raise ConfigError("stage config must be a map")
        try:
            spec = wire["spec"]
            config = cls(
                job=_typed(wire, "job", str),
                index=_typed(wire, "index", int),
                num_stages=_typed(wire, "num_stages", int),
                spec=StageSpec(
                    kind=_typed(spec, "kind", str),
                    params=_typed(spec, "params", dict),
                    synthesizer=SynthesizerSpec(**spec["synthesizer"]),
                    device=_typed(spec, "device", str),
                ),
                mode=_mode(wire["mode"]),
                input_shape=tuple(_typed(wire, "input_shape", list)),
                num_classes=_typed(wire, "num_classes", int),
                optimizer=OptimizerSpec(**wire["optimizer"]),
                seed=_typed(wire, "seed", int),
                window=_typed(wire, "window", int),
                threads=_typed(wire, "threads", int),
                coordinator=_typed(wire, "coordinator", str),
                upstream=wire.get("upstream"),
                downstream=wire.get("downstream"),
                record_spans=bool(wire.get("record_spans", False)),
                nonfinite=wire.get("nonfinite", "reject"),
                restore=wire.get("restore"),
            )
        except (KeyError, TypeError) as error:
            raise ConfigError(f"stage config is incomplete or malformed: {error}") from error
        config.validate()
        return config

    def validate(self) -> None:
        if not 0 <= self.index < self.num_stages:
            raise ConfigError(f"index {self.index} is outside 0..{self.num_stages - 1}")
        if self.window < 1:
            raise ConfigError(f"window must be at least 1, got {self.window}")
        if self.threads < 1:
            raise ConfigError(f"threads must be at least 1, got {self.threads}")
        if self.optimizer.name not in OPTIMIZERS:
            raise ConfigError(f"optimizer {self.optimizer.name!r} is not one of {OPTIMIZERS}")
        if not (isinstance(self.optimizer.lr, (int, float)) and self.optimizer.lr > 0):
            raise ConfigError(f"optimizer lr must be a positive number, got {self.optimizer.lr!r}")
        if not all(isinstance(size, int) and size > 0 for size in self.input_shape):
            raise ConfigError(f"input_shape must be positive integers, got {list(self.input_shape)}")
        if self.nonfinite not in NONFINITE_POLICIES:
            raise ConfigError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {self.nonfinite!r:.40}")
        if self.restore is not None and not isinstance(self.restore, str):
            raise ConfigError("restore must be a checkpoint path")
        if (self.upstream is None) != self.is_first or (self.downstream is None) != self.is_last:
            raise ConfigError("upstream/downstream addresses do not match the stage's position")


def _typed(table: Any, key: str, kind: type) -> Any:
    value = table[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{key} must be {kind.__name__}, got {value!r:.60}")
    return value


def _mode(value: Any) -> Mode:
    if value not in MODE_NAMES:
        raise ConfigError(f"mode {value!r:.40} is not one of {', '.join(MODE_NAMES)}")
    return Mode(value)
