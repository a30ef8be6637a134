"""The recipe's tests: telemetry off and NeMo's start-up chatter silenced, as in the product's tests."""

from __future__ import annotations

from nemo_ptq.cli import quiet_environment

quiet_environment()
