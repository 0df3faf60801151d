"""dni/__init__.py: every public name resolves to the object it documents, and nothing else does."""
from __future__ import annotations

import importlib

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
