"""A job setting, declared once: the `Setting` row that job files, `dni run` flags and the wire are read by.

A setting is a dataclass field made with `setting()`: its name, type and default are the field's, and the row
(`Setting`) adds what the field alone cannot say: the type a job file, flag or wire carries (`kind`), the check
that refuses a bad value (naming it as the reader shows it: `iterations` in a job file, `--iterations` on the
command line), the help text, how the value is written back (`dump`), and whether `dni run` has a flag for it.
The worker's settings are the fields of `dni.spec.WorkerSettings`, the job's are those of
`dni.coordinator.jobs.job.Job`: `settings_of` lists either's rows, and every reader walks them rather than naming
fields one by one, so a new setting is one field.
"""
from __future__ import annotations

from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, Callable, Optional

from dni.errors import ConfigError

__all__ = ["Check", "Setting", "check_type", "setting", "settings_of"]

Check = Callable[[Any, str], Any]  # (a value, the name to show) -> the value held; refuses any value it does not take
_ROW = "dni.setting"  # the field metadata key that holds a row's options


def check_type(name: str, value: Any, kind: type) -> Any:
    """`value` if it is a `kind` (a bool is no number: TOML and msgpack keep them apart, so must we; an int is a
    float, as a job file's `5` for 5.0)."""
    number = kind is float and isinstance(value, int)
    if not (isinstance(value, kind) or number) or (kind in (int, float) and isinstance(value, bool)):
        raise ConfigError(f"{name} must be {kind.__name__}, got {value!r:.60}")
    return value


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class Setting:
    """One setting's row. `check` is None where the kind alone is the check; `section` names the job file's table
    that holds a key which is no field of its own (`lr` in `[optimizer]`)."""
    name: str
    kind: type
    default: Any
    help: str
    check: Optional[Check] = None
    dump: Callable[[Any], Any] = _same  # the held value as a job file and the wire carry it
    flag: bool = False  # `dni run` sets it with `flag_name`
    choices: tuple[str, ...] = ()  # the flag's, for argparse to list
    section: str = ""
    wire_required: bool = False  # a worker refuses an assignment without it; else a missing one is the default

    @property
    def flag_name(self) -> str:
        """--name-with-dashes; a switch that is on by default is turned off by --no-name."""
        off = self.kind is bool and self.default is True
        return f"--{'no-' if off else ''}{self.name.replace('_', '-')}"

    def read(self, value: Any, shown: str = "") -> Any:
        """A job file's or flag's value as held: its kind first, so a wrong type always reads alike, then its check;
        a ConfigError names it `shown` (the flag), else by its name."""
        shown = shown or self.name
        checked = check_type(shown, value, self.kind)
        return self.check(checked, shown) if self.check else checked

    def receive(self, value: Any) -> Any:
        """A value from the wire: the check alone (it refuses any type it does not take), else the kind."""
        return self.check(value, self.name) if self.check else check_type(self.name, value, self.kind)


def setting(default: Any, help: str, *, kind: Optional[type] = None, check: Optional[Check] = None,
            dump: Callable[[Any], Any] = _same, flag: bool = False, choices: tuple[str, ...] = (),
            wire_required: bool = False) -> Any:
    """A dataclass field that is a setting: `default` (MISSING: none, the reader requires it) and the row's options;
    `kind` is the default's type unless the file carries another (a mode's name for a `Mode`)."""
    options = dict(kind=kind or type(default), help=help, check=check, dump=dump, flag=flag, choices=choices,
                   wire_required=wire_required)
    if default is MISSING:
        return field(metadata={_ROW: options})
    return field(default=default, metadata={_ROW: options})


def settings_of(cls: type) -> tuple[Setting, ...]:
    """The rows of a dataclass's setting fields, in field order (a base class's first)."""
    return tuple(_row(entry) for entry in fields(cls) if _ROW in entry.metadata)


def _row(entry: Field[Any]) -> Setting:
    return Setting(name=entry.name, default=entry.default, **entry.metadata[_ROW])
