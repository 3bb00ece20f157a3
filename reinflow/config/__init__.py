"""The config wing: the experiment config and what it names (plugin classes, models, overrides).

The config models are importable from here (``from reinflow.config import ExperimentConfig``);
they live in :mod:`reinflow.config.experiment`, the one place every default of reinflow is set.
:func:`load_config` (:mod:`reinflow.config.loading`) reads an experiment YAML into them.
"""

from reinflow.config.endpoint import EndpointConfig
from reinflow.config.experiment import (
    DataConfig,
    ExperimentConfig,
    FullTuning,
    HubSource,
    JudgeConfig,
    LocalSource,
    LoraTuning,
    ModelConfig,
    ReasoningGymSource,
    RolloutConfig,
    Section,
    TrackingConfig,
    TrainConfig,
)
from reinflow.config.loading import load_config
from reinflow.config.warmup import WarmupConfig

__all__ = [
    "DataConfig", "EndpointConfig", "ExperimentConfig", "FullTuning", "HubSource", "JudgeConfig", "LocalSource",
    "LoraTuning", "ModelConfig", "ReasoningGymSource", "RolloutConfig", "Section", "TrackingConfig",
    "TrainConfig", "WarmupConfig", "load_config",
]
