"""dni/__init__.py: every public name resolves to the object it documents, and nothing else does."""
from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import dni


@pytest.mark.parametrize("name", dni.__all__)
def test_every_public_name_resolves_to_its_home_module(name):
    value = getattr(dni, name)
    home = importlib.import_module(value.__module__)
    assert getattr(home, name) is value


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'Trainer'"):
        _ = dni.Trainer


def test_the_subpackages_live_under_dni():
    names = {importlib.import_module(f"dni.{package}").__name__ for package in ("protocol", "workers", "coordinator")}
    assert names == {"dni.protocol", "dni.workers", "dni.coordinator"}


def _modules() -> list[str]:
    names = []
    for package in ("dni", "dni.protocol", "dni.workers", "dni.coordinator", "dni.bench"):
        path = importlib.import_module(package).__path__
        names += [f"{package}.{module.name}" for module in pkgutil.iter_modules(path)
                  if not module.ispkg and module.name != "__main__" and not (package == "dni" and module.name in SUBPACKAGES)]
    return names


SUBPACKAGES = ("protocol", "workers", "coordinator", "bench")


@pytest.mark.parametrize("name", _modules())
def test_every_module_exports_exactly_its_public_definitions(name):
    module = importlib.import_module(name)
    exported = set(module.__all__)
    assert {export for export in exported if not hasattr(module, export)} == set()
    defined = {key for key, value in vars(module).items() if not key.startswith("_")
               and (inspect.isfunction(value) or inspect.isclass(value)) and value.__module__ == name}
    assert defined - exported == set(), "public functions and classes missing from __all__ (or to be named with _)"
