"""Finding stage and synthesizer builders by name, so new kinds plug in without touching the core."""
from __future__ import annotations

import importlib
import inspect
import typing
from importlib.metadata import entry_points
from typing import Any, Callable

from dni.errors import ConfigError
from dni.workers.build.stages import BUILTIN_STAGES
from dni.workers.interfaces.synthesizers import BUILTIN_SYNTHESIZERS

__all__ = [
    "STAGE_ARGUMENTS", "STAGE_GROUP", "SYNTHESIZER_ARGUMENTS", "SYNTHESIZER_GROUP", "UnknownBuilderError",
    "check_params", "import_callable", "import_hint", "resolve_stage", "resolve_synthesizer",
]

STAGE_GROUP = "dni.stages"
SYNTHESIZER_GROUP = "dni.synthesizers"


class UnknownBuilderError(ConfigError, LookupError):
    """A job names a stage or synthesizer kind that nothing provides."""


def resolve_stage(name: str) -> Callable[..., Any]:
    return _resolve(name, BUILTIN_STAGES, STAGE_GROUP, "stage")


def resolve_synthesizer(name: str) -> Callable[..., Any]:
    return _resolve(name, BUILTIN_SYNTHESIZERS, SYNTHESIZER_GROUP, "synthesizer")


def _resolve(name: str, builtin: dict[str, Callable[..., Any]], group: str, what: str) -> Callable[..., Any]:
    if ":" in name:
        return import_callable(name, f"{what} kind")
    if name in builtin:
        return builtin[name]
    for entry in entry_points(group=group):
        if entry.name == name:
            return entry.load()
    known = sorted(builtin) + sorted(entry.name for entry in entry_points(group=group))
    raise UnknownBuilderError(f"unknown {what} kind {name!r}; known: {', '.join(known)} (or an import path package.module:Name)")


def import_callable(path: str, what: str) -> Callable[..., Any]:
    """The callable at `package.module:name`; UnknownBuilderError naming `what` if it is not there."""
    module_name, _, attribute = path.partition(":")
    try:
        target = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise UnknownBuilderError(f"{what} {path!r} cannot be imported: {error}{import_hint(error)}") from error
    if not callable(target):
        raise UnknownBuilderError(f"{what} {path!r} is not callable")
    return target


def import_hint(error: Exception) -> str:
    """What to do about a plug-in module that is not found: it must be importable by the process that uses it."""
    if not isinstance(error, ModuleNotFoundError):
        return ""
    return " (install it, or put its folder on PYTHONPATH of every process that uses it)"


STAGE_ARGUMENTS = 1  # builder(input_shape, **params)
SYNTHESIZER_ARGUMENTS = 4  # builder(input_shape, output_shape, condition_dim, zero_init, **params)
_KEYWORD = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def check_params(builder: Callable[..., Any], params: dict[str, Any], where: str, supplied: int) -> None:
    """Raise ConfigError unless `params` fit the builder's signature.

    The first `supplied` positional parameters are dni's (the shapes); the job's params must
    name the others, give every one without a default, and match a simple annotation (int,
    float, str, bool: an int is a float, a bool is no int). A builder that takes **kwargs
    accepts any name; other annotations, and builders without annotations, are not checked.
    """
    try:
        signature = inspect.signature(builder)
    except (TypeError, ValueError):  # a builtin or extension callable without a readable signature
        return
    parameters = list(signature.parameters.values())
    taken = 0
    while taken < min(supplied, len(parameters)) and parameters[taken].kind in (
            inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
        taken += 1
    accepted = [parameter for parameter in parameters[taken:] if parameter.kind in _KEYWORD]
    names = ", ".join(parameter.name for parameter in accepted) or "none"
    if not any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters):
        unknown = [name for name in params if name not in {parameter.name for parameter in accepted}]
        if unknown:
            listed = ", ".join(repr(name) for name in unknown)
            raise ConfigError(f"{where}: unknown parameter{'s' if len(unknown) > 1 else ''} {listed}; accepted: {names}")
    required = [parameter.name for parameter in accepted if parameter.default is inspect.Parameter.empty and parameter.name not in params]
    if required:
        raise ConfigError(f"{where}: missing parameter{'s' if len(required) > 1 else ''} {', '.join(map(repr, required))}; accepted: {names}")
    hints = _type_hints(builder)
    for name, value in params.items():
        expected = hints.get(name)
        if expected in (int, float, str, bool) and not _fits(value, expected):
            raise ConfigError(f"{where}: {name} must be {expected.__name__}, got {value!r:.60} ({type(value).__name__})")


def _type_hints(builder: Callable[..., Any]) -> dict[str, Any]:
    """The builder's resolved annotations (a class: its __init__'s); none where they cannot be resolved."""
    target = builder.__init__ if inspect.isclass(builder) else builder if inspect.isroutine(builder) else type(builder).__call__
    try:
        return typing.get_type_hints(target)
    except Exception:  # a name only the builder's author can resolve (NameError), or no annotations to read
        return {}


def _fits(value: Any, expected: type) -> bool:
    if expected is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if expected is float:
        return isinstance(value, (int, float))
    return isinstance(value, expected)
