"""Typed errors. Each message says what is wrong and what to do about it.

Stages catch `PipelineError` at the top (see `nemo_ptq.cli.run_stage`), print one line and exit
non-zero; anything else is a bug and keeps its traceback.
"""


class PipelineError(Exception):
    """Base class: an expected failure caused by input, configuration or environment."""


class ConfigError(PipelineError):
    """params.yaml (or a -S override) is invalid: unknown key, bad value, unsupported combination."""


class ModelSourceError(PipelineError):
    """The pretrained model could not be found, downloaded or restored."""


class DataError(PipelineError):
    """A manifest or an audio file is missing, empty, corrupt or unusable."""


class UnsupportedModelError(PipelineError):
    """The model contains a layer or structure that this step cannot handle."""


class EquivalenceError(PipelineError):
    """A rewritten model does not reproduce the original model's output within tolerance."""


class BackendUnavailableError(PipelineError):
    """A backend's runtime requirement (a package, a compiler, a CPU feature) is missing."""


class TrackingError(PipelineError):
    """MLflow logging failed where it must not (NEMO_PTQ_MLFLOW=required, as sweep workers run)."""


class CalibrationError(PipelineError):
    """A calibration folder is missing, or was made by another backend, variant config or model."""


class FloatLayerError(ConfigError):
    """A `float_layers` entry that this backend's runtime would run in INT8 anyway."""


class BudgetError(PipelineError):
    """No set of float layers within the search's limits keeps the accuracy budget on the dev set."""
