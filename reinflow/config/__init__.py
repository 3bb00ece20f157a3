"""The config wing: the experiment config and what it names (plugin classes, models, overrides).

The config models are importable from here (``from reinflow.config import ExperimentConfig``);
they live in :mod:`reinflow.config.experiment`, the one place every default of reinflow is set.
"""

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
    load_config,
)

__all__ = [
    "DataConfig", "ExperimentConfig", "FullTuning", "HubSource", "JudgeConfig", "LocalSource",
    "LoraTuning", "ModelConfig", "ReasoningGymSource", "RolloutConfig", "Section", "TrackingConfig",
    "TrainConfig", "load_config",
]
