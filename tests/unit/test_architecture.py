"""docs/architecture.md: every name it gives a class, method or module function still exists in the code."""
from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from functools import cache

import pytest

from tests.conftest import REPO

DOC = REPO / "docs" / "architecture.md"
PACKAGES = ("dni", "dni.protocol", "dni.workers", "dni.coordinator", "dni.bench")
# `Trainer._train`, `Mode.locked`, `datapath.on_forward`, `dni.coordinator.train.trainer.Trainer._train`: a dotted name whose
# first part is a class or a module; `StageCompute` alone: a class. Lower-case single words are settings and keys.
DOTTED = re.compile(r"`((?:[A-Za-z_]\w*\.)+[A-Za-z_]\w*)(?:\(|`)")
CLASS = re.compile(r"`([A-Z][a-z]\w*[a-z]\w*)`")


@cache
def index() -> dict[str, object]:
    """Every module (subpackages' too) by its full and short name, every top-level class and function by name."""
    found: dict[str, object] = {}
    for package in PACKAGES:
        module = importlib.import_module(package)
        found[package] = module
        for info in pkgutil.walk_packages(module.__path__, f"{package}."):
            short = info.name.rsplit(".", 1)[1]
            if info.ispkg or short == "__main__":
                continue
            child = importlib.import_module(info.name)
            found[child.__name__] = found.setdefault(short, child)
            for name, value in vars(child).items():
                if (inspect.isclass(value) or inspect.isfunction(value)) and value.__module__ == child.__name__:
                    found.setdefault(name, value)
    return found


def resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):  # the longest known prefix, then attributes from there
        head = ".".join(parts[:cut])
        if head in index():
            value = index()[head]
            for attribute in parts[cut:]:
                if not has(value, attribute):
                    return False
                value = getattr(value, attribute, None)
            return True
    return False


def has(owner: object, attribute: str) -> bool:
    """A module's or class's attribute, a dataclass field, or an instance attribute its class assigns."""
    if hasattr(owner, attribute) or attribute in getattr(owner, "__annotations__", {}):
        return True
    return inspect.isclass(owner) and re.search(rf"self\.{attribute}\b\s*(:|=)", inspect.getsource(owner)) is not None


def names(pattern: re.Pattern) -> list[str]:
    return sorted(set(pattern.findall(DOC.read_text())))


FOREIGN = ("F.", "torch.", "nn.", "zmq.", "np.", "os.", "signal.")  # other libraries' names
FILES = (".py", ".md", ".json", ".jsonl", ".toml", ".pt")
ENTRY_POINT_GROUPS = ("dni.stages", "dni.synthesizers")


def code_names() -> list[str]:
    return [name for name in names(DOTTED)
            if not name.startswith(FOREIGN) and not name.endswith(FILES) and name not in ENTRY_POINT_GROUPS]


@pytest.mark.parametrize("dotted", code_names())
def test_every_dotted_name_in_the_architecture_resolves(dotted):
    assert resolves(dotted), f"docs/architecture.md names `{dotted}`, which the code no longer has"


@pytest.mark.parametrize("name", names(CLASS))
def test_every_class_in_the_architecture_exists(name):
    assert name in index(), f"docs/architecture.md names `{name}`, which the code no longer has"


def test_the_batch_path_is_listed_by_full_name():
    section = DOC.read_text().split("### The path by name", 1)[1].split("\n#", 1)[0]
    path = re.findall(r"^\d+\. `(dni\.[\w.]+)`", section, re.M)
    assert len(path) >= 10 and all(resolves(name) for name in path)
