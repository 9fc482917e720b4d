"""How a setting is declared: name, type, default, one-line help, and optionally its CLI flag, choices and
bounds, in one dataclass field. The loader, the ``STREAMLEARN_*`` variables and the CLI flags are read off
these declarations (:mod:`streamlearn.config.load`, :mod:`streamlearn.config.flags`)."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar


class ConfigError(ValueError):
    """A bad configuration value; ``key`` is its dotted path (``ps.mode``), empty when none applies, and
    ``label`` names it in the message where the key alone would not do (``checkpoint.dir (--checkpoint-dir)``)."""

    def __init__(self, key: str, message: str, label: str | None = None) -> None:
        label = label or key
        super().__init__(f"{label}: {message}" if label else message)
        self.key = key


def setting(default: Any = dataclasses.MISSING, help: str = "", *, flag: str | None = None,
            choices: Sequence[str] | None = None, ge: float | None = None, gt: float | None = None,
            le: float | None = None, lt: float | None = None,
            factory: Callable[[], Any] | None = None) -> Any:
    """One setting: its default, one-line help, CLI flag (None: config file and environment only), the
    values it may take (``choices``) and its bounds (``ge``/``gt``/``le``/``lt``), checked at construction."""
    meta = {"help": help, "flag": flag, "choices": tuple(choices) if choices else None,
            "ge": ge, "gt": gt, "le": le, "lt": lt}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _bounds(meta: typing.Mapping[str, Any]) -> str:
    parts = [f"{op} {meta[k]}" for k, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
             if meta.get(k) is not None]
    return " and ".join(parts)


def check_field(key: str, value: Any, meta: typing.Mapping[str, Any]) -> None:
    """Raise ConfigError naming ``key`` unless ``value`` is finite, one of its choices and within its bounds."""
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, float) and not math.isfinite(value):  # NaN passes "> 0", inf passes ">= 0"
        raise ConfigError(key, f"must be a finite number, got {value}")
    choices = meta.get("choices")
    if choices and value not in choices:
        raise ConfigError(key, f"unknown {value!r}, choose one of {', '.join(choices)}")
    if isinstance(value, (int, float)):
        lo, lo_strict, hi, hi_strict = meta.get("ge"), meta.get("gt"), meta.get("le"), meta.get("lt")
        if ((lo is not None and value < lo) or (lo_strict is not None and value <= lo_strict)
                or (hi is not None and value > hi) or (hi_strict is not None and value >= hi_strict)):
            raise ConfigError(key, f"must be {_bounds(meta)}, got {value}")


class Section:
    """Base of a config section (a frozen dataclass): each field is checked against its declaration when the
    section is built, then :meth:`check` checks the rules between fields."""

    key: ClassVar[str] = ""  # the section's name in a config file; "" for the top level

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            check_field(self.path(f.name), getattr(self, f.name), f.metadata)
        self.check()

    def check(self) -> None:
        """Rules between fields; raise ConfigError naming the key."""

    @classmethod
    def path(cls, name: str) -> str:
        return f"{cls.key}.{name}" if cls.key else name


def hints(cls: type) -> dict[str, Any]:
    """Field name -> resolved type of a dataclass."""
    return typing.get_type_hints(cls)


def plain(hint: Any) -> Any:
    """``int`` for ``int | None``: the type a flag or variable's text is parsed as."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return inner[0]
    return hint


def is_section(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def walk(root: type) -> Iterator[tuple[tuple[str, ...], dataclasses.Field[Any], Any]]:
    """Every setting under dataclass ``root``: (key path, field, type), sections' settings after the top's."""
    top = hints(root)
    for f in dataclasses.fields(root):
        if is_section(top[f.name]):
            sub = hints(top[f.name])
            for g in dataclasses.fields(top[f.name]):
                yield (f.name, g.name), g, sub[g.name]
        else:
            yield (f.name,), f, top[f.name]


def default_of(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None
