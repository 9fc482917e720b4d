"""CLI flags read off the declaration: each setting with a ``flag`` becomes an argparse option whose help shows
its default, and the flags a user gave become a nested override mapping for :func:`~streamlearn.config.load`."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from streamlearn.config.declare import default_of, plain, walk
from streamlearn.config.job import JobConfig
from streamlearn.config.load import ENV_PREFIX

Path = tuple[str, ...]
PATHS = "_setting_paths"  # the namespace attribute holding {dest: [key path, ...]} of the command's flags


def select(sections: Sequence[str] = (), top: Sequence[str] = (), exclude: Iterable[Path] = ()
           ) -> list[tuple[Path, dataclasses.Field[Any], Any]]:
    """The declared settings of these ``sections`` and ``top``-level names, in declaration order."""
    skip = set(exclude)
    return [(path, f, hint) for path, f, hint in walk(JobConfig)
            if path not in skip and ((len(path) == 2 and path[0] in sections) or (len(path) == 1 and path[0] in top))]


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return str(len(value))
    return str(value)


def add_flags(parser: argparse.ArgumentParser, group: Any, settings: Iterable[tuple[Path, dataclasses.Field[Any], Any]],
              env: bool, shown: Mapping[Path, Any] | None = None) -> None:
    """Add each setting's flag to ``group`` (a flag shared by settings, like --seed, sets them all); a flag
    not given stays out of the namespace, so the config file and environment keep their say. ``env``: the
    command reads ``STREAMLEARN_*`` variables, and the help names each one. ``shown``: a default the command
    applies in place of the declared one, for the help."""
    paths: dict[str, list[Path]] = dict(parser.get_default(PATHS) or {})
    for path, f, hint in settings:
        meta = f.metadata
        flag = meta.get("flag")
        if not flag:
            continue
        dest = flag[2:].replace("-", "_")
        if dest in paths:
            paths[dest] = [*paths[dest], path]
            continue
        paths[dest] = [path]
        default = _shown((shown or {}).get(path, default_of(f)))
        where = f"${ENV_PREFIX}{'_'.join(path).upper()} or " if env else ""
        help_text = f"{meta.get('help', '')} (default {where}{default})".replace("%", "%%")
        kind = plain(hint)
        kw: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS, "help": help_text}
        if kind is bool:
            kw["action"] = "store_true"
        else:
            kw["type"] = kind if kind in (int, float) else str
            kw["metavar"] = {int: "N", float: "X"}.get(kind)  # None: argparse's own (the name, or the choices)
            kw["choices"] = meta.get("choices")
        group.add_argument(flag, **kw)
    parser.set_defaults(**{PATHS: paths})


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The flags the user gave, as a nested config mapping."""
    out: dict[str, Any] = {}
    for dest, paths in (getattr(args, PATHS, None) or {}).items():
        if not hasattr(args, dest):
            continue
        for path in paths:
            node = out
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = getattr(args, dest)
    return out


def flag_of(args: argparse.Namespace, key: str) -> str | None:
    """The flag the user gave that set config ``key`` (``ps.mode`` -> ``--ps-mode``), or None."""
    for dest, paths in (getattr(args, PATHS, None) or {}).items():
        if hasattr(args, dest) and any(".".join(p) == key for p in paths):
            return "--" + dest.replace("_", "-")
    return None
