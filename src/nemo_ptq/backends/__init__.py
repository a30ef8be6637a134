"""Quantization backends, one module each, behind the protocol in `base`.

Adding a backend: a new module here, named like the backend, that registers a `Backend`
subclass, and a variant entry in params.yaml. Modules are imported when a variant names them, so
a backend's runtime (OpenVINO, Inductor, ...) loads only where it is used.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nemo_ptq.backends.base import Backend, registry
from nemo_ptq.errors import ConfigError
from nemo_ptq.params import load_section

SUPPORT_MODULES = frozenset({"base", "calibration"})


def available() -> list[str]:
    """Backend names: this package's backend modules plus anything registered by hand."""
    modules = {m.name for m in pkgutil.iter_modules(__path__) if m.name not in SUPPORT_MODULES}
    return sorted(modules | set(registry()))


def get_backend(variant: str, entry: Mapping[str, Any] | None, card: Mapping[str, Any] | None = None,
                model_dir: Path | None = None) -> Backend:
    """The configured backend for one `variants.<variant>` entry of params.yaml."""
    if not isinstance(entry, Mapping) or "backend" not in entry:
        raise ConfigError(f"variants.{variant} needs a 'backend' key; choose one of: {', '.join(available())}")
    name = entry["backend"]
    if name not in available():
        raise ConfigError(f"variants.{variant}: unknown backend {name!r}; choose one of: {', '.join(available())}")
    if name not in registry():
        importlib.import_module(f"{__name__}.{name}")  # registers itself
    if name not in registry():
        raise ConfigError(f"backend module {name}.py registers no backend named {name!r}: name it so")
    return registry()[name].from_params(variant, entry, card, model_dir)


def backend_for_variant(variant: str, params_path: Path, model_dir: Path) -> Backend:
    """What the calibrate and quantize stages start from: params.yaml's entry plus the model card."""
    card = json.loads((Path(model_dir) / "card.json").read_text())
    return get_backend(variant, load_section("variants", params_path).get(variant), card, Path(model_dir))
