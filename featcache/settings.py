"""What users type, parsed and checked in one place: sizes of memory, lists of seeds, and `setting`, the
dataclass field every config of featcache is written with.

A config's field carries its default and its help; the CLI builds each option from the field
(featcache.cli_options.option), so a default is written once, as in Hugging Face's TrainingArguments.
Torch-free: configs are checked before any model is built or image read.
"""
from __future__ import annotations

import math
import numbers
import os
import re
from dataclasses import field, fields

from .errors import FeatcacheError

UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
         "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


class UnknownSetting(FeatcacheError, TypeError):
    """A keyword argument that is no field of the config it builds: a TypeError, as Python's own for an
    unexpected keyword, and a FeatcacheError, so the CLI prints it in one line."""


def setting(default, help: str, *, option: str | None = None, choices: tuple | None = None,
            minimum: int | None = None, metavar: str | None = None, cli: bool = True):
    """A config field with what the CLI needs to offer it: its help, and, where the command line spells
    it differently, the option's name, its choices, its minimum or its metavar. cli=False: an API-only
    field (what a caller knows, such as an extraction's wall time)."""
    metadata = {"help": help, "option": option, "choices": choices, "minimum": minimum, "metavar": metavar,
                "cli": cli}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def like(config_class, name: str, help: str | None = None):
    """A setting with the default and command-line form of another config's field (the experiment's
    fine-tuning settings are fine-tuning's), its help unless `help` says more."""
    item = config_class.__dataclass_fields__[name]
    meta = dict(item.metadata)
    return setting(item.default, help or meta.pop("help"), **{key: meta[key] for key in
                                                             ("option", "choices", "minimum", "metavar", "cli")})


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


def check_positive(name: str, value: float) -> float:
    """A learning rate and the like: positive and finite."""
    if isinstance(value, bool) or not (isinstance(value, numbers.Real) and value > 0 and math.isfinite(value)):
        raise FeatcacheError(f"`{name}` must be a positive finite number, got {value}")
    return value


def check_at_least(name: str, value: int, minimum: int) -> int:
    if value < minimum:
        raise FeatcacheError(f"`{name}` must be at least {minimum}, got {value}")
    return value


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        names = [repr(choice) for choice in choices]
        raise FeatcacheError(f"`{name}` must be {', '.join(names[:-1])} or {names[-1]}, got {value!r}")


def parse_memory(text: str | int) -> int:
    """'1GB' (10^9 bytes), '512MiB' (2^29), '2e9' or an int: bytes."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([a-z]*)\s*", str(text).lower())
    if not match or match.group(2) not in UNITS:
        raise FeatcacheError(f"`max_memory` must be a size such as 1GB, 512MiB or 2e9 (bytes), got {text!r}")
    count = int(float(match.group(1)) * UNITS[match.group(2)])
    if count < 1:
        raise FeatcacheError(f"`max_memory` must be positive, got {text!r}")
    return count


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


def parse_seeds(text: str) -> list[int]:
    """'0-9' (inclusive), '0,3,7', or 'N' meaning N seeds 0..N-1 (one particular seed k: 'k-k')."""
    try:
        if "-" in text.strip().lstrip("-"):
            first, last = (int(part) for part in text.split("-"))
            seeds = list(range(first, last + 1))
        elif "," in text:
            seeds = [int(part) for part in text.split(",") if part.strip()]
        else:
            seeds = list(range(int(text)))
    except ValueError:
        raise FeatcacheError(f"`seeds` must be 'A-B', a comma-separated list or a count, got {text!r}") from None
    return _distinct(seeds, text)


def as_seed_list(seeds) -> list[int]:
    """Seeds as a list: a count N (seeds 0..N-1), a string 'A-B' or '0,3,7', or an iterable of ints."""
    if isinstance(seeds, int):  # a count, as on the command line
        return parse_seeds(str(seeds))
    return parse_seeds(seeds) if isinstance(seeds, str) else _distinct([int(seed) for seed in seeds], seeds)


def _distinct(seeds: list[int], given) -> list[int]:
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise FeatcacheError(f"`seeds` must name distinct non-negative seeds, got {given!r}")
    return seeds
