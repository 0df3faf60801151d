"""A job: what to train, how, and where its workers live. Read from TOML, checked before anything starts."""
from __future__ import annotations

import os
import tomllib
from dataclasses import MISSING, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional

from dni.coordinator.jobs.cuts import MODEL_KEYS, model_table
from dni.workers.build.model_piece import MODEL_PIECE
from dni.coordinator.data.dataset import BUILTIN_DATASETS, resolve_data_root
from dni.coordinator.data.datasets import check_dataset
from dni.coordinator.data.normalize import AUTO, Normalization, check_normalize
from dni.errors import ConfigError
from dni.graph import Topology
from dni.settings import Setting, check_type, setting, settings_of
from dni.spec import (Mode, OptimizerSpec, StageSpec, SynthesizerSpec, WorkerSettings, check_at_least_one, check_device, check_join,
                      check_labels, check_loss, check_lr, check_not_negative, check_weight, topology_of)

__all__ = ["JOB_KEYS", "Job", "LR", "SEQUENCE_MODES", "SETTINGS", "SHORTCUTS", "TASKS", "job_as_table", "job_from_table", "load_job",
           "with_addresses"]

JOBS_DIR = Path(__file__).parent  # the shortcuts' job files lie beside this module
SHORTCUTS = {"mnist": JOBS_DIR / "mnist_fcn.toml", "mnist-smoke": JOBS_DIR / "mnist_smoke.toml", "cifar10": JOBS_DIR / "cifar10_cnn.toml",
             "copy": JOBS_DIR / "copy.toml", "repeat-copy": JOBS_DIR / "repeat_copy.toml", "chars": JOBS_DIR / "chars.toml"}
TASKS = ("copy", "repeat-copy", "chars")  # a sequence job's task (dni.coordinator.data.tasks)
SEQUENCE_MODES = (Mode.BACKPROP, Mode.SG, Mode.NO_BPROP)  # cdni's label and sl's scalar have no per-step meaning
STAGE_KEYS = ("kind", "device", "address", "synthesizer")
GRAPH_KEYS = ("name", "inputs", "join", "loss", "loss_weight", "labels", "num_classes")  # a stage's place in the graph (dni.graph)


def _dataset(value: str, name: str) -> str:
    """A built-in dataset or a plug-in that resolves (a typo fails now); "" for a sequence job, which has none."""
    if value:
        check_dataset(value)
    return value


def _normalize(value: Any, name: str) -> Normalization:
    return check_normalize(value)


def _num_classes(value: Any, name: str) -> int:
    if check_type(name, value, int) < 0:
        raise ConfigError(f"{name} must not be negative (0: the dataset's own count), got {value}")
    return value


def _fraction(value: Any, name: str) -> float:
    if not 0 <= check_type(name, value, float) <= 1:
        raise ConfigError(f"{name} must be a fraction from 0 to 1 (0: never stop early), got {value}")
    return value


def _loss(value: Any, name: str) -> str:
    return check_loss(value, name=name)


def _normalization(value: Normalization) -> Any:
    return value.setting()


@dataclass(frozen=True, kw_only=True)
class Job(WorkerSettings):
    """A job: its stages and its settings. Each setting is one `setting()` field (the worker's are inherited from
    `WorkerSettings`): the job file's key, its check, its `dni run` flag and help all come from that one row."""
    stages: tuple[StageSpec, ...]
    name: str = setting(MISSING, "run name (default: the job file's name)", kind=str, flag=True)
    dataset: str = setting("", f"the dataset: {', '.join(BUILTIN_DATASETS)}, a plug-in's import path package.module:function, "
                           "or a plug-in installed under the dni.datasets entry point", check=_dataset, flag=True)
    batch_size: int = setting(256, "examples per training batch", check=check_at_least_one, flag=True)
    iterations: int = setting(25_000, "training steps (batches)", check=check_not_negative, flag=True)
    epochs: int = setting(0, "train for this many epochs instead of --iterations", check=check_not_negative, flag=True)
    time_limit: int = setting(0, "stop training after this many seconds, evaluate and finish normally (0: no limit)",
                              check=check_not_negative, flag=True)
    stop_at_accuracy: float = setting(0.0, "stop training once a test evaluation reaches this accuracy (e.g. 0.95), "
                                      "evaluate and finish normally (0: never)", check=_fraction, flag=True)
    eval_every: int = setting(0, "steps between test evaluations (0: once per epoch)", check=check_not_negative, flag=True)
    eval_batch_size: int = setting(1000, "examples per evaluation batch", check=check_at_least_one)
    threads: int = setting(0, "torch threads per worker (0: share this machine's cores)", check=check_not_negative, flag=True)
    data_root: str = setting("", "dataset folder (else $DNI_DATA_ROOT, else ./data)", flag=True)
    results: str = setting("runs", "folder for run folders (default ./runs)", flag=True)
    train_subset: int = setting(0, "use only the first N training examples (0: all)", check=check_not_negative, flag=True)
    test_subset: int = setting(0, "use only the first N test examples (0: all)", check=check_not_negative, flag=True)
    verify_data: bool = setting(True, "checksum datasets as torchvision does (--no-verify-data skips it, for rebuilt local "
                                "copies)", flag=True)
    download: bool = setting(True, "download missing datasets (--no-download never does)", flag=True)
    checkpoint_every: int = setting(1000, "steps between checkpoints of every stage (0: only at the end)",
                                    check=check_not_negative, flag=True)
    keys: str = setting("", "CURVE key directory made by `dni keys DIR`; required when an address reaches beyond loopback")
    insecure: bool = setting(False, "run without keys even if `keys` is set; allowed only on loopback and ipc:// addresses")
    rejoin_seconds: int = setting(60, "remote workers: seconds a lost worker has to come back at its address (restarted "
                                  "by compose or Swarm) before the run fails (default 60; 0: fail at once)",
                                  check=check_not_negative, flag=True)
    max_recoveries: int = setting(30, "lost workers replaced within any --recovery-window, or in a row that resume from "
                                  "the same checkpoint; one more ends the run (default 30; 0: the first loss ends it)",
                                  check=check_not_negative, flag=True)
    recovery_window: int = setting(300, "seconds over which --max-recoveries counts (default 300)", check=check_at_least_one,
                                   flag=True)
    tensorboard: str = setting("", "write each evaluation's curves, worker activity and staleness for TensorBoard into "
                               "this folder, one subfolder per run (needs pip install 'dni[tensorboard]')", flag=True)
    loss: str = setting("cross_entropy", "the last stage's loss: cross_entropy (default), multi_margin, or "
                        "package.module:function taking (logits, labels) and returning per-example losses",
                        check=_loss, flag=True)
    normalize: Normalization = setting(AUTO, "how examples become floats, once per dataset: a name, [[mean...], [std...]] "
                                       "or {mean = [...], std = [...]} (see coordinator/data/normalize.py)", kind=object,
                                       check=_normalize, dump=_normalization)
    num_classes: int = setting(0, "classes of the dataset (0: the dataset's; a plug-in's: its largest label + 1)",
                               check=_num_classes)
    task: str = setting("", f"a sequence job's task ({', '.join(TASKS)}; \"\": a dataset job); iterations then counts "
                        "batches of sequences")
    text: str = setting("", "the chars job's text file (the last tenth is held out); `dni run --text FILE` runs it", flag=True)
    text_window: int = setting(100, "the chars task: steps of each stream per batch", check=check_at_least_one)
    eval_characters: int = setting(20_000, "the chars task: at most this much of the held-out tail is scored at the end",
                                   check=check_at_least_one)
    model: str = ""  # package.module:function the stages are cut from ("": stages of their own)
    split: tuple[int, ...] = ()  # the model's cut points between children
    cut: tuple[str, ...] = ()  # the submodules a traced model is cut after (`dni.workers.build.partition`)
    balance: int = 0  # stages = N: the cuts are still to be measured for the input shape (`dni.coordinator.jobs.split`)

    @property
    def topology(self) -> Topology:
        """The job's stages as a graph (`dni.graph`): names, inputs, heads; a chain when the job names none."""
        return topology_of(self.stages)

    def head_loss(self, index: int) -> str:
        """The loss that scores head `index`: its own, else the job's."""
        return self.stages[index].loss or self.loss

    @property
    def source(self) -> str:
        """Where the job's examples come from, which picks its checks here and its feed (`run.FEEDS`): "task" (a
        sequence task's generated batches) or "dataset"."""
        return "task" if self.task else "dataset"

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


LR = Setting("lr", float, OptimizerSpec.lr, "learning rate of every optimiser", check=check_lr, flag=True,
             section="optimizer")  # the one key of a table that has a flag
SETTINGS = (*settings_of(Job), LR)
_TOP = {row.name: row for row in SETTINGS if not row.section}  # the rows of a job file's top-level keys
JOB_KEYS = frozenset({*_TOP, "stages"})


def load_job(target: str, overrides: Optional[dict[str, Any]] = None) -> Job:
    """A job from a shortcut name or a TOML file, with overrides (setting -> value; None: as the file says) on top."""
    path = SHORTCUTS.get(target, Path(target))
    if not path.is_file():
        raise ConfigError(f"job {target!r} is neither a shortcut ({', '.join(SHORTCUTS)}) nor a TOML file")
    try:
        table = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from error
    table.setdefault("name", path.stem)
    sections = {row.name: row.section for row in SETTINGS if row.section}
    for key, value in (overrides or {}).items():
        if value is not None and key in sections:
            table[sections[key]] = {**table.get(sections[key], {}), key: value}
        elif value is not None:
            table[key] = value
    return job_from_table(table, str(path))


def job_from_table(table: dict[str, Any], origin: str = "job") -> Job:
    """A checked Job; a ConfigError names `origin` (the file) and the setting."""
    try:
        return _job(table)
    except ConfigError as error:
        raise ConfigError(f"{origin}: {error}") from None


def _job(table: dict[str, Any]) -> Job:
    table, model = _model_fields(table)
    unknown = [key for key in table if key not in JOB_KEYS]
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]!r}; known: {', '.join(sorted(JOB_KEYS))}")
    if "stages" not in table or not ("dataset" in table or "task" in table):
        raise ConfigError("a job needs 'dataset' (or a sequence 'task') and at least two [[stages]]")
    stages = tuple(_stage(entry, index) for index, entry in enumerate(check_type("stages", table["stages"], list)))
    if len(stages) < 2:
        raise ConfigError(f"a pipeline needs at least two stages, got {len(stages)}")
    settings = {key: _TOP[key].read(value) for key, value in table.items() if key != "stages"}
    missing = [row.name for row in SETTINGS if row.default is MISSING and row.name not in settings]
    if missing:
        raise ConfigError(f"a job needs {missing[0]!r}")
    job = Job(stages=stages, **model, **settings)
    _validate(job)
    return job


def _model_fields(table: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A job of its own model: the table with the model's slices as [[stages]], and the Job's model fields."""
    if not (any(key in table for key in MODEL_KEYS) or isinstance(table.get("stages"), int)):
        return table, {}
    return model_table(table)


def _model_as_table(job: Job) -> dict[str, Any]:
    """The model keys that make the job's stages again: its cuts (or stages = N before they are measured)."""
    cuts = {"cut": list(job.cut)} if job.stages[0].kind == MODEL_PIECE else {"split": list(job.split)}
    table: dict[str, Any] = {"model": job.model, **({"stages": job.balance} if job.balance else cuts)}
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
        params={key: value for key, value in entry.items() if key not in (*STAGE_KEYS, *GRAPH_KEYS)},
        synthesizer=SynthesizerSpec(kind=str(synthesizer.pop("kind", "mlp")), params=synthesizer),
        device=device,
        address=address,
        **_graph_keys(entry, where),
    )


def _graph_keys(entry: dict[str, Any], where: str) -> dict[str, Any]:
    """A stage's name, inputs, join and, for a head, its loss, weight, labels and classes, each checked."""
    keys: dict[str, Any] = {}
    if "name" in entry:
        keys["name"] = check_type(f"{where}.name", entry["name"], str)
    if "inputs" in entry:
        inputs = check_type(f"{where}.inputs", entry["inputs"], list)
        keys["inputs"] = tuple(check_type(f"{where}.inputs", name, str) for name in inputs)
    if "join" in entry:
        keys["join"] = check_join(entry["join"], f"{where}.join")
    if "loss" in entry:
        keys["loss"] = check_loss(entry["loss"], f"{where}.loss")
    if "loss_weight" in entry:
        keys["loss_weight"] = check_weight(entry["loss_weight"], f"{where}.loss_weight")
    if "labels" in entry:
        keys["labels"] = check_labels(entry["labels"], f"{where}.labels")
    if "num_classes" in entry:
        keys["num_classes"] = check_at_least_one(entry["num_classes"], f"{where}.num_classes")
    return keys


def _validate(job: Job) -> None:
    """What no one setting's check can see: how settings go together."""
    _VALIDATE_BY_SOURCE[job.source](job)
    if not (job.iterations or job.epochs):
        raise ConfigError("set iterations or epochs")
    topology = job.topology
    for index, stage in enumerate(job.stages):
        if index not in topology.heads and (stage.labels or stage.num_classes or stage.loss_weight != 1.0):
            raise ConfigError(f"stage {topology.names[index]!r}: labels, num_classes and loss_weight belong to a head "
                              "(a stage with a loss)")
    remote = [stage.address is not None for stage in job.stages]
    if any(remote) and not all(remote):
        raise ConfigError("either every stage has an address (remote workers) or none does")


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
    if job.epochs:
        raise ConfigError("a sequence job has no epochs: iterations counts its batches of sequences")
    if not job.topology.chain:
        raise ConfigError("a sequence job's stages form a chain: name no inputs and no loss (its task scores the last)")
    meaningless = [name for name in _DATASET_ONLY if getattr(job, name) != _TOP[name].default]
    if meaningless:
        raise ConfigError(f"{', '.join(meaningless)}: no meaning in a sequence job (its task sets its data and loss)")


def _validate_data(job: Job) -> None:
    """A dataset job has a dataset (checked by its setting) and no sequence settings."""
    if job.truncation or job.text:
        raise ConfigError("truncation and text belong to a sequence job (task = copy, repeat-copy or chars)")


_VALIDATE_BY_SOURCE: dict[str, Callable[[Job], None]] = {"task": _validate_sequence, "dataset": _validate_data}


def job_as_table(job: Job) -> dict[str, Any]:
    """The job in job-file form (what job_from_table reads back), for a run folder and --resume."""
    table = {name: row.dump(getattr(job, name)) for name, row in _TOP.items()}
    if job.model:
        return {**table, **_model_as_table(job)}
    table["stages"] = [
        {"kind": stage.kind, "device": stage.device, **stage.params,
         "synthesizer": {"kind": stage.synthesizer.kind, **stage.synthesizer.params},
         **({"address": stage.address} if stage.address else {}), **_graph_table(stage)}
        for stage in job.stages
    ]
    return table


def _graph_table(stage: StageSpec) -> dict[str, Any]:
    """The graph keys a stage's entry sets (left out where they are the defaults, so a chain's entries stay as they were)."""
    defaults = StageSpec("")
    table = {key: getattr(stage, key) for key in GRAPH_KEYS if getattr(stage, key) != getattr(defaults, key)}
    if "inputs" in table:
        table["inputs"] = list(table["inputs"])
    return table


def with_addresses(job: Job, addresses: list[str]) -> Job:
    if len(addresses) != len(job.stages):
        raise ConfigError(f"--workers lists {len(addresses)} addresses but the job has {len(job.stages)} stages")
    return replace(job, stages=tuple(replace(stage, address=address) for stage, address in zip(job.stages, addresses)))
