"""What users type, parsed and checked in one place: sizes of memory, lists of seeds, and `setting`, the
dataclass field every config of featcache is written with.

A config's field carries its default and its help; the CLI builds each option from the field
(featcache.cli_options.option), so a default is written once, as in Hugging Face's TrainingArguments.
Torch-free: configs are checked before any model is built or image read.
"""
from __future__ import annotations

import functools
import math
import numbers
import os
import re
import types
import typing
from dataclasses import field, fields
from pathlib import Path

from .errors import FeatcacheError

UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
         "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


class UnknownSetting(FeatcacheError, TypeError):
    """A keyword argument that is no field of the config it builds: a TypeError, as Python's own for an
    unexpected keyword, and a FeatcacheError, so the CLI prints it in one line."""


class ConfigError(FeatcacheError, ValueError):
    """A setting its field does not allow (out of range, not a choice, of the wrong type, malformed): the
    command line's usage errors (exit status 2, one line naming the option); errors while running exit 1."""


def setting(default, help: str, *, option: str | None = None, choices: tuple | None = None,
            minimum: float | None = None, maximum: float | None = None, above: float | None = None,
            below: float | None = None, check=None, metavar: str | None = None, cli: bool = True):
    """A config field with its constraint, written once: `choices`, `minimum`/`maximum` (inclusive),
    `above`/`below` (exclusive), or `check(name, value)` for a format (a memory size, a list of seeds).
    A tuple field's constraint holds for each of its items, and it needs at least one. The field's
    annotation is its type. check_fields enforces all of it in a config's __post_init__, and the CLI's
    option (featcache.cli_options.option) at parse time, both through check_value. Besides: its help,
    and where the command line spells it differently the option's name or metavar. cli=False: an
    API-only field (what a caller knows, such as an extraction's wall time)."""
    metadata = {"help": help, "option": option, "choices": choices, "minimum": minimum, "maximum": maximum,
                "above": above, "below": below, "check": check, "metavar": metavar, "cli": cli}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


CONSTRAINTS = ("option", "choices", "minimum", "maximum", "above", "below", "check", "metavar", "cli")


def like(config_class, name: str, help: str | None = None):
    """A setting with the default, constraint and command-line form of another config's field (the
    experiment's fine-tuning settings are fine-tuning's), its help unless `help` says more."""
    item = config_class.__dataclass_fields__[name]
    meta = dict(item.metadata)
    return setting(item.default, help or meta.pop("help"), **{key: meta[key] for key in CONSTRAINTS})


@functools.lru_cache(maxsize=None)
def _annotations(config_class) -> dict:
    """A config class's evaluated annotations, once per class (typing.get_type_hints evaluates them all)."""
    return typing.get_type_hints(config_class)


def field_type(config_class, name: str) -> tuple[type | None, bool, type | None]:
    """(type, whether None is allowed, item type of a tuple) of a config's field, from its annotation;
    type None where the annotation admits several (a size given as 1GB or in bytes: its `check` decides)."""
    hint = _annotations(config_class)[name]
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    optional = type(None) in args
    kinds = [arg for arg in args if arg is not type(None)]
    if len(kinds) != 1:
        return None, optional, None
    kind = kinds[0]
    if typing.get_origin(kind) is tuple:
        return tuple, optional, typing.get_args(kind)[0]
    return kind, optional, None


def check_value(config_class, name: str, value):
    """`value` as field `name` of `config_class` holds it (a list as a tuple, a numpy integer as an int),
    or a ConfigError naming the field: its type, then its constraint."""
    meta = config_class.__dataclass_fields__[name].metadata
    kind, optional, item_kind = field_type(config_class, name)
    if value is None:
        if optional or kind is object:
            return value
        raise ConfigError(f"`{name}` must be given")
    if kind is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"`{name}` must be a list or tuple, got {_shown(value)}")
        items = tuple(_typed(name, item, item_kind) for item in value)
        if not items and (meta["choices"] or _bounded(meta)):  # `unfreeze=()` (the head alone) may be empty
            raise ConfigError(f"`{name}` must name at least one value")
        for item in items:
            _constrained(name, item, meta)
        return items
    value = _typed(name, value, kind)
    _constrained(name, value, meta)
    return value


def check_fields(config) -> None:
    """Every setting of `config` checked by check_value (and stored as it holds it): what each config's
    __post_init__ calls first."""
    for item in fields(config):
        if "help" in item.metadata:
            value = getattr(config, item.name)
            checked = check_value(type(config), item.name, value)
            if checked is not value:
                object.__setattr__(config, item.name, checked)


def _typed(name: str, value, kind):
    if kind in (None, object):
        return value
    if kind is bool:
        if not _is_bool(value):
            raise ConfigError(f"`{name}` must be True or False, got {_shown(value)}")
        return bool(value)
    if kind is int:
        if _is_bool(value) or not isinstance(value, numbers.Integral):
            raise ConfigError(f"`{name}` must be a whole number, got {_shown(value)}")
        return int(value)
    if kind is float:
        if _is_bool(value) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ConfigError(f"`{name}` must be a finite number, got {_shown(value)}")
        return value
    if kind is Path:
        if not isinstance(value, (str, os.PathLike)):
            raise ConfigError(f"`{name}` must be a path, got {_shown(value)}")
        return value
    if kind is str and isinstance(value, os.PathLike):  # weights=Path("w.pth")
        return os.fspath(value)
    if kind is str and type(value).__name__ == "device":  # device=torch.device("cuda:1"), without importing torch
        return str(value)
    if not isinstance(value, kind):
        raise ConfigError(f"`{name}` must be a {kind.__name__}, got {_shown(value)}")
    return value


def _is_bool(value) -> bool:
    return isinstance(value, bool) or type(value).__name__ == "bool_"  # numpy's, without importing numpy


def _bounded(meta) -> bool:
    return any(meta[bound] is not None for bound in ("minimum", "maximum", "above", "below"))


def _constrained(name: str, value, meta) -> None:
    if meta["choices"] is not None and value not in meta["choices"]:
        names = [repr(choice) for choice in meta["choices"]]
        raise ConfigError(f"`{name}` must be {', '.join(names[:-1])} or {names[-1]}, got {value!r}")
    for bound, holds, words in (("minimum", lambda v, b: v >= b, "at least"), ("maximum", lambda v, b: v <= b, "at most"),
                                ("above", lambda v, b: v > b, "greater than"), ("below", lambda v, b: v < b, "less than")):
        if meta[bound] is not None and not holds(value, meta[bound]):
            raise ConfigError(f"`{name}` must be {words} {meta[bound]:g}, got {value!r}")
    if meta["check"] is not None:
        try:
            meta["check"](name, value)
        except ConfigError:
            raise
        except FeatcacheError as error:
            raise ConfigError(str(error)) from None


def _shown(value) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def require(name: str, value, kind, what: str):
    """An API argument that must be a `kind` (a DataSpec, say), refused in one line naming it otherwise."""
    if not isinstance(value, kind):
        raise ConfigError(f"`{name}` must be {what}, got {_shown(value)}")
    return value


def as_paths(name: str, value) -> list:
    """A list of paths given as a list (or any iterable of paths), never one string taken for its characters."""
    if isinstance(value, (str, bytes, os.PathLike)):
        raise ConfigError(f"`{name}` must be a list of paths, got the single path {str(value)!r}: write [{str(value)!r}]")
    try:
        paths = list(value)
    except TypeError:
        raise ConfigError(f"`{name}` must be a list of paths, got {_shown(value)}") from None
    for path in paths:
        if not isinstance(path, (str, os.PathLike)):
            raise ConfigError(f"`{name}` must be a list of paths, got an item {_shown(path)}")
    return paths


DEFAULT_BACKBONE = "resnet18"  # its caches' keys and names are those of every featcache before --backbone
DEVICES_HELP = "'auto' (CUDA when available, else CPU), 'cpu', 'cuda' or 'cuda:N'."


def field_names(config_class) -> list[str]:
    return [item.name for item in fields(config_class)]


def built(config_class, config, arguments: dict, function: str):
    """`config` (a config_class, or None for the defaults) with `arguments` replacing its fields; a name
    that is no field is an error naming it, never silently recorded or ignored."""
    unknown = [name for name in arguments if name not in field_names(config_class)]
    if unknown:
        raise UnknownSetting(f"{function} has no argument {', '.join(f'`{name}`' for name in unknown)}; "
                             f"its settings are those of {config_class.__name__}: {', '.join(field_names(config_class))}")
    if config is None:
        return config_class(**arguments)
    if not isinstance(config, config_class):
        raise FeatcacheError(f"{function} takes a {config_class.__name__}, got {type(config).__name__}")
    return type(config)(**{**{name: getattr(config, name) for name in field_names(config_class)}, **arguments})


def parse_memory(text: str | int, name: str = "max_memory") -> int:
    """'1GB' (10^9 bytes), '512MiB' (2^29), '2e9' or an int: bytes; anything else a ConfigError naming `name`."""
    if isinstance(text, numbers.Integral) and not _is_bool(text):
        count = int(text)
    else:
        match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?(?:e[+]?[0-9]+)?)\s*([a-z]*)\s*", str(text).lower())
        number = float(match.group(1)) if match and match.group(2) in UNITS else math.nan
        if not math.isfinite(number) or number * UNITS[match.group(2)] >= 2 ** 63:
            raise ConfigError(f"`{name}` must be a size such as 1GB, 512MiB or 2e9 (bytes), got {text!r}")
        count = int(number * UNITS[match.group(2)])
    if count < 1:
        raise ConfigError(f"`{name}` must be positive, got {text!r}")
    return count


def check_memory(name: str, value) -> None:
    """A field's `check`: a memory size parse_memory reads."""
    parse_memory(value, name)


def check_seeds(name: str, value) -> None:
    """A field's `check`: seeds as_seed_list reads."""
    as_seed_list(value)


def default_memory_budget() -> int:
    """Half the memory available now (Linux: MemAvailable; elsewhere: half the physical memory)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 2
    except OSError:
        pass
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4


def memory_budget(max_memory: int | str | None, sharers: int = 1) -> int:
    """`max_memory` in bytes, or by default half the available memory shared among `sharers` processes."""
    return parse_memory(max_memory) if max_memory is not None else default_memory_budget() // sharers


MAX_SEEDS = 10_000  # a bound, so that a typo such as 0-1000000000 is an error, not a list of a billion


def parse_seeds(text: str) -> list[int]:
    """'0-9' (inclusive), '0,3,7', or 'N' meaning N seeds 0..N-1 (one particular seed k: 'k-k')."""
    try:
        if "-" in text.strip().lstrip("-"):
            first, last = (int(part) for part in text.split("-"))
            seeds = range(first, last + 1)
        elif "," in text:
            seeds = [int(part) for part in text.split(",") if part.strip()]
        else:
            seeds = range(int(text))
    except ValueError:
        raise ConfigError(f"`seeds` must be 'A-B', a comma-separated list or a count, got {text!r}") from None
    return _distinct(seeds, text)


def as_seed_list(seeds) -> list[int]:
    """Seeds as a list: a count N (seeds 0..N-1), a string 'A-B' or '0,3,7', or an iterable of ints."""
    if isinstance(seeds, numbers.Integral) and not _is_bool(seeds):  # a count, as on the command line
        return parse_seeds(str(int(seeds)))
    if isinstance(seeds, str):
        return parse_seeds(seeds)
    try:
        if any(_is_bool(seed) or not isinstance(seed, numbers.Integral) for seed in seeds):
            raise TypeError
        return _distinct([int(seed) for seed in seeds], seeds)
    except TypeError:
        raise ConfigError(f"`seeds` must be a count, 'A-B', '0,3,7' or a list of whole numbers, got {seeds!r}") from None


def _distinct(seeds, given) -> list[int]:
    if not 0 < len(seeds) <= MAX_SEEDS or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ConfigError(f"`seeds` must name between 1 and {MAX_SEEDS:,} distinct non-negative seeds, got {given!r}")
    return list(seeds)
