"""Finding stage and synthesizer builders by name, so new kinds plug in without touching the core."""
from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any, Callable

from workers.stages import BUILTIN_STAGES
from workers.synthesizers import BUILTIN_SYNTHESIZERS

STAGE_GROUP = "dni.stages"
SYNTHESIZER_GROUP = "dni.synthesizers"


class UnknownBuilderError(LookupError):
    """A job names a stage or synthesizer kind that nothing provides."""


def resolve_stage(name: str) -> Callable[..., Any]:
    return _resolve(name, BUILTIN_STAGES, STAGE_GROUP, "stage")


def resolve_synthesizer(name: str) -> Callable[..., Any]:
    return _resolve(name, BUILTIN_SYNTHESIZERS, SYNTHESIZER_GROUP, "synthesizer")


def _resolve(name: str, builtin: dict[str, Callable[..., Any]], group: str, what: str) -> Callable[..., Any]:
    if ":" in name:
        return _import(name, what)
    if name in builtin:
        return builtin[name]
    for entry in entry_points(group=group):
        if entry.name == name:
            return entry.load()
    known = sorted(builtin) + sorted(entry.name for entry in entry_points(group=group))
    raise UnknownBuilderError(f"unknown {what} kind {name!r}; known: {', '.join(known)} (or an import path package.module:Name)")


def _import(path: str, what: str) -> Callable[..., Any]:
    module_name, _, attribute = path.partition(":")
    try:
        target = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise UnknownBuilderError(f"{what} kind {path!r} cannot be imported: {error}") from error
    if not callable(target):
        raise UnknownBuilderError(f"{what} kind {path!r} is not callable")
    return target
