"""dni: Decoupled Neural Interfaces (Jaderberg et al. 2017), one worker process per layer.

The public API. Each name is imported when first used, so that a worker process,
which imports `dni.workers`, does not pay for the coordinator's imports:

    import dni
    job = dni.load_job("mnist", {"mode": "cdni", "iterations": 2000})
    folder, summary = dni.run_job(job)

`StageCompute` is the DNI algorithm of one stage without any socket (forward,
update with the synthetic gradient, train the synthesizer on the true target),
with `OptimizerSpec` its optimiser and `MLPSynthesizer` the built-in synthesizer;
`StageBuilder` and `SynthesizerBuilder` are the contracts a plug-in honours;
`split` makes a job's stages from a model of one's own, and `cut_here()` marks
in a model's `forward` where a stage ends.
The subpackages are `dni.protocol` (bytes and messages), `dni.workers` (one
stage and its neighbours) and `dni.coordinator` (the job).
"""
from __future__ import annotations

import importlib.abc
import sys
from importlib import import_module
from importlib.machinery import ModuleSpec
from importlib.util import spec_from_file_location
from pathlib import Path
from typing import Any, Optional

__all__ = [
    "Job", "MLPSynthesizer", "Mode", "OptimizerSpec", "StageBuilder", "StageCompute", "SynthesizerBuilder", "cut_here",
    "load_job", "resume_job", "run_job", "split",
]

SUBPACKAGES = ("protocol", "workers", "coordinator")  # the folders beside this one that install as dni.X


class _CheckoutFinder(importlib.abc.MetaPathFinder):
    """A source checkout imports as dni without installation, as on a machine that only receives the working tree:
    exactly the three named folders beside this one, as dni.protocol, dni.workers and dni.coordinator (any other
    folder stays what it is); an installed dni finds its own subpackages first."""

    def __init__(self, checkout: Path) -> None:
        self.folders = {f"dni.{name}": checkout / name for name in SUBPACKAGES}

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Optional[ModuleSpec]:
        folder = self.folders.get(fullname)
        if folder is None:
            return None
        return spec_from_file_location(fullname, folder / "__init__.py", submodule_search_locations=[str(folder)])


_CHECKOUT = Path(__file__).resolve().parent.parent
if all((_CHECKOUT / folder / "__init__.py").is_file() for folder in SUBPACKAGES):
    sys.meta_path.append(_CheckoutFinder(_CHECKOUT))

_HOMES = {
    "Job": "dni.coordinator.jobs.job", "load_job": "dni.coordinator.jobs.job",
    "run_job": "dni.coordinator.train.run", "resume_job": "dni.coordinator.train.run", "split": "dni.coordinator.jobs.split",
    "Mode": "dni.spec", "OptimizerSpec": "dni.spec",
    "StageBuilder": "dni.workers.build.contracts", "SynthesizerBuilder": "dni.workers.build.contracts",
    "StageCompute": "dni.workers.stage.compute", "MLPSynthesizer": "dni.workers.interfaces.synthesizers",
    "cut_here": "dni.workers.build.tracing",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'dni' has no attribute {name!r}")
    value = getattr(import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
