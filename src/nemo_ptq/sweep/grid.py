"""The points of a sweep: `-S path=v1,v2` options expanded into their cartesian product.

Each value is passed to `dvc exp run -S path=value` as written (DVC parses it as YAML). A point's
experiment name is a hash of the baseline commit and its settings, so the same sweep run again
finds the points it already finished (on the Git remote) and runs only the rest.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass

from nemo_ptq.errors import ConfigError

PARAM_PATH = re.compile(r"^[A-Za-z_][\w-]*(\.[\w-]+)*$")
NAME_PREFIX = re.compile(r"^[a-z][a-z0-9-]{0,30}$")


@dataclass(frozen=True)
class Point:
    name: str  # the DVC experiment name
    settings: tuple[str, ...]  # "path=value", one per swept parameter, in the order given

    def label(self) -> str:
        return " ".join(self.settings)


def parse_option(option: str) -> tuple[str, list[str]]:
    """'a.b=1,2' -> ('a.b', ['1', '2'])."""
    path, sep, values = option.partition("=")
    path = path.strip()
    if not sep or not PARAM_PATH.match(path):
        raise ConfigError(f"-S {option!r}: expected path.to.param=value[,value...] (a params.yaml key)")
    choices = [value.strip() for value in values.split(",")]
    if any(not value for value in choices):
        raise ConfigError(f"-S {option!r}: empty value (values are separated by commas)")
    if len(set(choices)) != len(choices):
        raise ConfigError(f"-S {option!r}: a value is listed twice")
    return path, choices


def expand(options: Sequence[str], baseline: str, prefix: str = "sweep") -> list[Point]:
    """Every combination of the options' values, as points named <prefix>-<hash>."""
    if not options:
        raise ConfigError("a sweep needs at least one -S path=value[,value...]")
    if not NAME_PREFIX.match(prefix):
        raise ConfigError(f"--name {prefix!r}: use lowercase letters, digits and '-' (a Git ref name)")
    parsed = [parse_option(option) for option in options]
    paths = [path for path, _ in parsed]
    if len(set(paths)) != len(paths):
        raise ConfigError(f"a parameter is swept twice: {', '.join(sorted({p for p in paths if paths.count(p) > 1}))}")
    points = []
    for values in itertools.product(*(choices for _, choices in parsed)):
        settings = tuple(f"{path}={value}" for path, value in zip(paths, values))
        digest = hashlib.sha256("\n".join([baseline, *sorted(settings)]).encode()).hexdigest()[:10]
        points.append(Point(f"{prefix}-{digest}", settings))
    return points
