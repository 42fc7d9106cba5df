"""What each propagation setting looks like to the user, declared once as dataclass field
metadata (:func:`option`), and the conversions every entry shape derives from it: queued-task
params (:func:`to_params` / :func:`from_params`), command-line arguments (:func:`add_arguments` /
:func:`from_args`) and the zoo model's keywords (:func:`zoo_keywords`). The operator form is
derived in ``operators/option_form.py`` from the same :func:`option_specs`.

A setting's kind follows from its type annotation: ``bool``, ``int``, ``float``, ``str`` (text)
or a sequence of floats (``floats``: comma-separated text in the form and in params, several
values on the command line); ``Optional[...]`` means None is a value ("not set").
"""
from __future__ import annotations

import argparse
import collections.abc
import dataclasses
import functools
import typing
from typing import Any, Optional

ENTRY_SHAPES = frozenset({"form", "cli", "zoo"})  # where a setting may be shown (params carry every one)
_BLANK = (None, "")


class _FieldDefault:
    def __repr__(self) -> str:
        return "<the field's default>"


FIELD_DEFAULT = _FieldDefault()  # OptionInfo.form_default when the form shows the field's default


@dataclasses.dataclass(frozen=True)
class OptionInfo:
    """How one setting is shown. ``label``: the form's label; ``help``: one description for the
    form and the command line (lower case; the form capitalises it); ``shown``: the entry shapes
    that offer it (:data:`ENTRY_SHAPES`); ``choices``: allowed values, or (value, label) pairs;
    ``required``: the form and the command line ask for it; ``minimum``: the form's lower bound;
    ``flag``: the command-line flag when not ``--<name-with-dashes>``; ``form_default``: the form's
    and the params' default when it is not the field's; ``core``: the
    :class:`deaot_core.TrackerOptions` field it sets (engine knobs)."""

    label: str
    help: str
    shown: frozenset = ENTRY_SHAPES
    choices: tuple = ()
    required: bool = False
    minimum: Optional[float] = None
    flag: Optional[str] = None
    metavar: Optional[str] = None
    form_default: Any = FIELD_DEFAULT
    core: Optional[str] = None


def option(default: Any, label: str, help: str, **info) -> Any:
    """A dataclass field with ``default`` whose metadata is the :class:`OptionInfo` built from
    ``label``, ``help`` and ``info``."""
    if "shown" in info:
        info["shown"] = frozenset(info["shown"])
        unknown = info["shown"] - ENTRY_SHAPES
        if unknown:
            raise ValueError(f"unknown entry shape(s) {sorted(unknown)}; known: {sorted(ENTRY_SHAPES)}")
    return dataclasses.field(default=default, metadata={"option": OptionInfo(label, help, **info)})


@dataclasses.dataclass(frozen=True)
class OptionSpec:
    """One setting as every entry shape sees it: the field's ``name``, ``kind`` (``bool``,
    ``int``, ``float``, ``text`` or ``floats``), whether None is a value (``optional``), its
    ``default`` and its :class:`OptionInfo` (``info``)."""

    name: str
    kind: str
    optional: bool
    default: Any
    info: OptionInfo

    @property
    def choice_values(self) -> tuple:
        return tuple(c[0] if isinstance(c, tuple) else c for c in self.info.choices)

    @property
    def choice_labels(self) -> dict:
        return dict(choice if isinstance(choice, tuple) else (choice, choice) for choice in self.info.choices)

    @property
    def form_default(self) -> Any:
        """The default the form shows and params fall back to."""
        return self.default if self.info.form_default is FIELD_DEFAULT else self.info.form_default

    @property
    def flag(self) -> str:
        return self.info.flag or "--" + self.name.replace("_", "-")

    def shown_in(self, shape: str) -> bool:
        return shape in self.info.shown

    def as_param(self, value: Any) -> Any:
        """``value`` as the form (and a queued task's JSON params) hold it."""
        if self.kind == "floats" and value is not None:
            return ",".join(repr(float(item)) for item in value)
        return value

    def from_param(self, value: Any) -> Any:
        """A form/params value as the option's value; blank means the form's default (for a
        number that may be None: None)."""
        if isinstance(value, str):
            value = value.strip()
        if value in _BLANK:
            return None if self.kind in ("int", "float") and self.optional else self.form_default
        if self.kind == "bool":
            return bool(value)
        if self.kind in ("int", "float") and not isinstance(value, bool):
            try:
                return (int if self.kind == "int" else float)(value)
            except (TypeError, ValueError):
                raise ValueError(f"{self.name} must be a {'whole ' if self.kind == 'int' else ''}number, "
                                 f"got {value!r}") from None
        return value


def _kind(name: str, hint) -> tuple[str, bool]:
    """(kind, optional) for a field's resolved type annotation; TypeError for a type no entry
    shape can show."""
    args = typing.get_args(hint)
    optional = typing.get_origin(hint) is typing.Union and type(None) in args
    if optional:
        rest = [a for a in args if a is not type(None)]
        hint = rest[0] if len(rest) == 1 else hint
    origin = typing.get_origin(hint)
    if hint in (bool, int, float):
        return hint.__name__, optional
    if hint is str:
        return "text", optional
    if origin in (collections.abc.Sequence, tuple, list) and typing.get_args(hint)[:1] == (float,):
        return "floats", optional
    raise TypeError(f"option {name!r}: no entry shape can show a {hint!r} (bool, int, float, str or a "
                    f"sequence of floats)")


@functools.lru_cache(maxsize=None)
def option_specs(cls: type) -> tuple[OptionSpec, ...]:
    """The settings of the options dataclass ``cls`` (its fields with :func:`option` metadata),
    in field order."""
    hints = typing.get_type_hints(cls)
    return tuple(OptionSpec(f.name, *_kind(f.name, hints[f.name]), f.default, f.metadata["option"])
                 for f in dataclasses.fields(cls) if "option" in f.metadata)


def zoo_keywords(cls: type) -> tuple[str, ...]:
    """The keyword arguments a zoo model takes for ``cls``'s settings."""
    return tuple(spec.name for spec in option_specs(cls) if spec.shown_in("zoo"))


def to_params(options) -> dict[str, Any]:
    """Every setting of ``options`` as JSON-safe params in the form's types."""
    return {spec.name: spec.as_param(getattr(options, spec.name)) for spec in option_specs(type(options))}


def from_params(cls: type, params: dict) -> dict[str, Any]:
    """``cls`` keyword arguments for the form's ``params``: each setting from its param (absent:
    the form's default); other keys (``delegate``...) are ignored."""
    return {spec.name: spec.from_param(params.get(spec.name, spec.form_default))
            for spec in option_specs(cls)}


def _default_text(spec: OptionSpec) -> str:
    value = spec.default
    return " ".join(repr(float(item)) for item in value) if spec.kind == "floats" else str(value)


def _argument(spec: OptionSpec) -> dict[str, Any]:
    """``add_argument`` keywords for ``spec`` (its default named in the help unless it is
    required, off or None: the help says what None means)."""
    kwargs: dict[str, Any] = dict(dest=spec.name, help=spec.info.help)
    if spec.kind == "bool":
        kwargs.update(action=argparse.BooleanOptionalAction if spec.default else "store_true", default=spec.default)
    else:
        kwargs.update(default=spec.default, required=spec.info.required)
        if spec.kind in ("int", "float"):
            kwargs["type"] = int if spec.kind == "int" else float
        elif spec.kind == "floats":
            kwargs.update(type=float, nargs="+")
        if spec.info.choices:
            kwargs["choices"] = spec.choice_values
        if spec.info.metavar:
            kwargs["metavar"] = spec.info.metavar
        if not spec.info.required and spec.default is not None:
            kwargs["help"] += f" (default: {_default_text(spec)})"
    kwargs["help"] = kwargs["help"].replace("%", "%%")
    return kwargs


def add_arguments(cls: type, parser: argparse.ArgumentParser) -> None:
    """Declare ``cls``'s command-line settings on ``parser`` (read back by :func:`from_args`)."""
    for spec in option_specs(cls):
        if spec.shown_in("cli"):
            parser.add_argument(spec.flag, **_argument(spec))


def from_args(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """``cls`` keyword arguments for the arguments :func:`add_arguments` declared."""
    given = vars(args)
    return {spec.name: given[spec.name] for spec in option_specs(cls) if spec.name in given}
