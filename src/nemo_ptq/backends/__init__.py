"""Quantization backends, one module each, behind the protocol in `base`.

Adding a backend: a new module here that registers a `Backend` subclass, one import line below,
and a variant entry in params.yaml.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nemo_ptq.backends import eager  # noqa: F401  (registers itself)
from nemo_ptq.backends import ort  # noqa: F401  (registers itself)
from nemo_ptq.backends import ov  # noqa: F401  (registers itself)
from nemo_ptq.backends import pt2e  # noqa: F401  (registers itself)
from nemo_ptq.backends.base import Backend, registry
from nemo_ptq.errors import ConfigError


def get_backend(variant: str, entry: Mapping[str, Any] | None, card: Mapping[str, Any] | None = None) -> Backend:
    """The configured backend for one `variants.<variant>` entry of params.yaml."""
    if not isinstance(entry, Mapping) or "backend" not in entry:
        raise ConfigError(f"variants.{variant} needs a 'backend' key; choose one of: {', '.join(registry())}")
    name = entry["backend"]
    backends = registry()
    if name not in backends:
        raise ConfigError(f"variants.{variant}: unknown backend {name!r}; choose one of: {', '.join(backends)}")
    return backends[name].from_params(variant, entry, card)


def backend_for_variant(variant: str, params_path: Path, model_dir: Path) -> Backend:
    """What the calibrate and quantize stages start from: params.yaml's entry plus the model card."""
    from nemo_ptq.params import load_section

    card = json.loads((Path(model_dir) / "card.json").read_text())
    return get_backend(variant, load_section("variants", params_path).get(variant), card)
