"""A job: what to train, how, and where its workers live. Read from TOML, checked before anything starts."""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

from dni.coordinator.cuts import MODEL_KEYS, model_table
from dni.coordinator.data import resolve_data_root
from dni.coordinator.datasets import check_dataset
from dni.coordinator.normalize import AUTO, Normalization, check_normalize
from dni.errors import ConfigError
from dni.spec import (Mode, OptimizerSpec, StageSpec, SynthesizerSpec, check_device, check_discount, check_link_delay, check_loss,
                      check_mode, check_nonfinite, check_optimizer, check_positive, check_type)

__all__ = ["Job", "SEQUENCE_MODES", "SHORTCUTS", "TASKS", "job_as_table", "job_from_table", "load_job", "with_addresses"]

JOBS_DIR = Path(__file__).parent / "jobs"
SHORTCUTS = {"mnist": JOBS_DIR / "mnist_fcn.toml", "mnist-smoke": JOBS_DIR / "mnist_smoke.toml", "cifar10": JOBS_DIR / "cifar10_cnn.toml",
             "copy": JOBS_DIR / "copy.toml", "repeat-copy": JOBS_DIR / "repeat_copy.toml", "chars": JOBS_DIR / "chars.toml"}
TASKS = ("copy", "repeat-copy", "chars")  # a sequence job's task (dni.coordinator.tasks)
SEQUENCE_MODES = (Mode.BACKPROP, Mode.SG, Mode.NO_BPROP)  # cdni's label and sl's scalar have no per-step meaning
STAGE_KEYS = ("kind", "device", "address", "synthesizer")
JOB_KEYS = {
    "name": str, "dataset": str, "mode": str, "batch_size": int, "iterations": int, "epochs": int,
    "seed": int, "eval_every": int, "eval_batch_size": int, "window": int, "threads": int,
    "data_root": str, "results": str, "train_subset": int, "test_subset": int, "verify_data": bool,
    "download": bool, "record_spans": bool, "nonfinite": str, "checkpoint_every": int, "optimizer": dict, "stages": list,
    "keys": str, "insecure": bool, "time_limit": int, "tensorboard": str, "loss": str, "rejoin_seconds": int,
    "max_recoveries": int, "recovery_window": int,
    "link_delay_ms": float, "stop_at_accuracy": float, "profile": bool, "cuda_graphs": bool,
    "normalize": object, "num_classes": int,  # normalize: a name, [[mean...], [std...]] or a table (check_normalize)
    "task": str, "text": str, "truncation": int, "discount": float, "text_window": int, "eval_characters": int,
}


@dataclass(frozen=True)
class Job:
    name: str
    dataset: str
    stages: tuple[StageSpec, ...]
    mode: Mode = Mode.SG
    batch_size: int = 256
    iterations: int = 25_000
    epochs: int = 0  # when set, overrides iterations
    time_limit: int = 0  # seconds of training after which the run stops early, evaluates and finishes (0: none)
    stop_at_accuracy: float = 0.0  # a test evaluation at least this accurate ends training as time_limit does (0: never)
    seed: int = 0
    eval_every: int = 0  # steps between evaluations; 0 means once per epoch
    eval_batch_size: int = 1000
    window: int = 4
    threads: int = 0  # torch threads per worker; 0 shares this machine's cores among the workers
    data_root: str = ""
    results: str = "runs"
    train_subset: int = 0  # use only the first N training examples (0: all)
    test_subset: int = 0
    verify_data: bool = True  # checksum datasets as torchvision does; off for rebuilt local copies
    download: bool = True
    record_spans: bool = False
    profile: bool = False  # each worker runs under cProfile; summary.json's worker_metrics carry its hottest functions
    cuda_graphs: bool = True  # CUDA stages replay their training passes as CUDA graphs (a last partial batch runs eagerly)
    nonfinite: str = "reject"  # a tensor with NaN/Inf arriving at a worker: reject the message, or count it
    checkpoint_every: int = 1000  # steps between checkpoints of every stage (0: only at the end)
    keys: str = ""  # CURVE key directory made by `dni keys DIR`; required when an address reaches beyond loopback
    insecure: bool = False  # run without keys even if `keys` is set; allowed only on loopback and ipc:// addresses
    rejoin_seconds: int = 60  # remote workers: how long a lost one has to come back (restarted by compose, Swarm) before the run fails
    max_recoveries: int = 30  # lost workers replaced within any recovery_window seconds, or in a row from one checkpoint;
    # one more ends the run (0: none)
    recovery_window: int = 300
    tensorboard: str = ""  # folder for TensorBoard event files, one subfolder per run ("": none); needs dni[tensorboard]
    loss: str = "cross_entropy"  # the last stage's per-example loss: a built-in name or package.module:function
    link_delay_ms: float = 0.0  # emulated delay of every data hop, coordinator's included, held in its sender's queue; 0: none
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    model: str = ""  # package.module:function whose children the stages are slices of ("": stages of their own)
    split: tuple[int, ...] = ()  # the model's cut points between children
    balance: int = 0  # stages = N: the cuts are still to be measured for the input shape (`dni.coordinator.split`)
    normalize: Normalization = AUTO  # how examples become floats, once per dataset (see coordinator/normalize.py)
    num_classes: int = 0  # 0: the dataset's (a plug-in's: its largest label + 1)
    task: str = ""  # a sequence job's task (TASKS; "": a dataset job); iterations then counts batches of sequences
    text: str = ""  # the chars task's text file
    truncation: int = 0  # a sequence job's T: steps per chunk, the truncation of BPTT
    discount: float = 1.0  # a sequence job: the weight of the synthetic gradient at each chunk's end
    text_window: int = 100  # the chars task: steps of each stream per batch
    eval_characters: int = 20_000  # the chars task: at most this much of the held-out tail is scored at the end

    @property
    def is_sequence(self) -> bool:
        return bool(self.task)

    def resolved_data_root(self) -> Path:
        """data_root, else $DNI_DATA_ROOT, else ./data; raises DataError for a named root that does not exist."""
        return resolve_data_root(self.data_root, self.dataset)

    def total_steps(self, train_size: int) -> int:
        if self.epochs:
            return self.epochs * self.steps_per_epoch(train_size)
        return self.iterations

    def steps_per_epoch(self, train_size: int) -> int:
        return max(1, train_size // self.batch_size)

    def check_fits(self, train_examples: int) -> None:
        """A batch must fit in the training set: a larger one would make every step the whole set, under a size it
        does not have (a ConfigError naming both numbers)."""
        if self.batch_size > train_examples:
            raise ConfigError(f"batch_size = {self.batch_size} is larger than the training set ({train_examples} examples"
                              f"{' after train_subset' if self.train_subset else ''}): use at most {train_examples}")

    def threads_per_worker(self) -> int:
        return self.threads or max(1, (os.cpu_count() or 1) // len(self.stages))


def load_job(target: str, overrides: Optional[dict[str, Any]] = None) -> Job:
    """A job from a shortcut name or a TOML file, with command-line overrides applied on top."""
    path = SHORTCUTS.get(target, Path(target))
    if not path.is_file():
        raise ConfigError(f"job {target!r} is neither a shortcut ({', '.join(SHORTCUTS)}) nor a TOML file")
    try:
        table = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from error
    table.setdefault("name", path.stem)
    overrides = {key: value for key, value in (overrides or {}).items() if value is not None}
    if "lr" in overrides:
        table["optimizer"] = {**table.get("optimizer", {}), "lr": overrides.pop("lr")}
    table.update(overrides)
    return job_from_table(table, str(path))


def job_from_table(table: dict[str, Any], origin: str = "job") -> Job:
    """A checked Job; a ConfigError names `origin` (the file) and the setting."""
    try:
        return _job(table)
    except ConfigError as error:
        raise ConfigError(f"{origin}: {error}") from None


def _job(table: dict[str, Any]) -> Job:
    table, model = _model_fields(table)
    for key, value in table.items():
        if key not in JOB_KEYS:
            raise ConfigError(f"unknown setting {key!r}; known: {', '.join(sorted(JOB_KEYS))}")
        check_type(key, value, JOB_KEYS[key])
    if "stages" not in table or not ("dataset" in table or "task" in table):
        raise ConfigError("a job needs 'dataset' (or a sequence 'task') and at least two [[stages]]")
    optimizer = table.get("optimizer", {})
    job = Job(
        name=table["name"],
        dataset=table.get("dataset", ""),
        stages=tuple(_stage(entry, index) for index, entry in enumerate(table["stages"])),
        mode=check_mode(table.get("mode", "sg")),
        optimizer=check_optimizer(optimizer.get("name", "adam"), optimizer.get("lr", OptimizerSpec.lr), set(optimizer)),
        **model,
        normalize=check_normalize(table.get("normalize", "auto")),
        **{key: value for key, value in table.items() if key not in ("name", "dataset", "stages", "mode", "optimizer", "normalize")},
    )
    _validate(job)
    return job


def _model_fields(table: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A job of its own model: the table with the model's slices as [[stages]], and the Job's model fields."""
    if not (any(key in table for key in MODEL_KEYS) or isinstance(table.get("stages"), int)):
        return table, {}
    return model_table(table)


def _model_as_table(job: Job) -> dict[str, Any]:
    """The model keys that make the job's stages again: its cuts (or stages = N before they are measured)."""
    table: dict[str, Any] = {"model": job.model, **({"stages": job.balance} if job.balance else {"split": list(job.split)})}
    table["synthesizers"] = [{"kind": stage.synthesizer.kind, **stage.synthesizer.params} for stage in job.stages[:-1]]
    return table


def _stage(entry: Any, index: int) -> StageSpec:
    where = f"stages[{index}]"
    if not isinstance(entry, dict) or not isinstance(entry.get("kind"), str):
        raise ConfigError(f"{where} needs a 'kind' (a registered stage name or package.module:Name)")
    synthesizer = entry.get("synthesizer", {})
    if not isinstance(synthesizer, dict):
        raise ConfigError(f"{where}.synthesizer must be a table like {{ kind = \"mlp\", hidden = 1024 }}")
    synthesizer = dict(synthesizer)
    address = entry.get("address")
    if address is not None and not (isinstance(address, str) and address.startswith(("tcp://", "ipc://"))):
        raise ConfigError(f"{where}.address must be a tcp:// or ipc:// address, got {address!r:.60}")
    try:
        device = check_device(str(entry.get("device", "cpu")))
    except ConfigError as error:
        raise ConfigError(f"{where}.{error}") from None
    return StageSpec(
        kind=entry["kind"],
        params={key: value for key, value in entry.items() if key not in STAGE_KEYS},
        synthesizer=SynthesizerSpec(kind=str(synthesizer.pop("kind", "mlp")), params=synthesizer),
        device=device,
        address=address,
    )


def _validate(job: Job) -> None:
    if job.is_sequence:
        _validate_sequence(job)
    else:
        _validate_data(job)
    if len(job.stages) < 2:
        raise ConfigError(f"a pipeline needs at least two stages, got {len(job.stages)}")
    for name in ("batch_size", "eval_batch_size", "window"):
        check_positive(name, getattr(job, name))
    check_nonfinite(job.nonfinite)
    check_loss(job.loss)
    check_link_delay(job.link_delay_ms)
    if not 0 <= job.stop_at_accuracy <= 1:
        raise ConfigError(f"stop_at_accuracy must be a fraction from 0 to 1 (0: never stop early), got {job.stop_at_accuracy}")
    check_positive("recovery_window", job.recovery_window)
    for name in ("iterations", "epochs", "eval_every", "threads", "train_subset", "test_subset", "checkpoint_every", "time_limit",
                 "rejoin_seconds", "max_recoveries"):
        if getattr(job, name) < 0:
            raise ConfigError(f"{name} must not be negative, got {getattr(job, name)}")
    if not (job.iterations or job.epochs):
        raise ConfigError("set iterations or epochs")
    remote = [stage.address is not None for stage in job.stages]
    if any(remote) and not all(remote):
        raise ConfigError("either every stage has an address (remote workers) or none does")


_DEFAULTS = Job(name="", dataset="", stages=())
_DATASET_ONLY = ("eval_every", "eval_batch_size", "train_subset", "test_subset", "num_classes", "normalize", "loss",
                "stop_at_accuracy")  # settings of a dataset job that a sequence job refuses unless left as they are


def _validate_sequence(job: Job) -> None:
    """A sequence job: a known task (chars with its text), no dataset, a truncation, a mode with a per-step meaning."""
    if job.task not in TASKS:
        raise ConfigError(f"task {job.task!r:.40} is not one of {', '.join(TASKS)}")
    if job.dataset:
        raise ConfigError(f"a sequence job generates its data (task = {job.task!r}): it has no dataset")
    if (job.task == "chars") != bool(job.text):
        raise ConfigError("the chars task needs text = a text file (--text FILE), and only it reads one")
    if job.truncation < 1:
        raise ConfigError(f"a sequence job needs truncation = T, its chunk length, of at least 1, got {job.truncation}")
    if job.mode not in SEQUENCE_MODES:
        raise ConfigError(f"a sequence job trains in {', '.join(mode.value for mode in SEQUENCE_MODES)}, not {job.mode.value}")
    check_discount(job.discount)
    if job.epochs:
        raise ConfigError("a sequence job has no epochs: iterations counts its batches of sequences")
    for name in ("text_window", "eval_characters"):
        check_positive(name, getattr(job, name))
    meaningless = [name for name in _DATASET_ONLY if getattr(job, name) != getattr(_DEFAULTS, name)]
    if meaningless:
        raise ConfigError(f"{', '.join(meaningless)}: no meaning in a sequence job (its task sets its data and loss)")


def _validate_data(job: Job) -> None:
    """The dataset resolves (a plug-in imports, so a typo fails now) and num_classes, when set, is positive."""
    if job.truncation or job.text:
        raise ConfigError("truncation and text belong to a sequence job (task = copy, repeat-copy or chars)")
    check_dataset(job.dataset)
    if job.num_classes < 0:
        raise ConfigError(f"num_classes must not be negative (0: the dataset's own count), got {job.num_classes}")


def job_as_table(job: Job) -> dict[str, Any]:
    """The job in job-file form (what job_from_table reads back), for a run folder and --resume."""
    table = {key: getattr(job, key) for key in JOB_KEYS if key not in ("stages", "optimizer", "mode")}
    table["mode"] = job.mode.value
    table["normalize"] = job.normalize.setting()
    table["optimizer"] = {"name": job.optimizer.name, "lr": job.optimizer.lr}
    if job.model:
        return {**table, **_model_as_table(job)}
    table["stages"] = [
        {"kind": stage.kind, "device": stage.device, **stage.params,
         "synthesizer": {"kind": stage.synthesizer.kind, **stage.synthesizer.params},
         **({"address": stage.address} if stage.address else {})}
        for stage in job.stages
    ]
    return table


def with_addresses(job: Job, addresses: list[str]) -> Job:
    if len(addresses) != len(job.stages):
        raise ConfigError(f"--workers lists {len(addresses)} addresses but the job has {len(job.stages)} stages")
    return replace(job, stages=tuple(replace(stage, address=address) for stage, address in zip(job.stages, addresses)))
