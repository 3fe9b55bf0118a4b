"""Running a stage: checkpoints, RNG capture, fault injection, metrics and progress bars."""

from __future__ import annotations

from posttrain.run.checkpoint import (
    Checkpoint,
    CheckpointError,
    ConfigDriftError,
    check_config_drift,
    config_fingerprint,
    find_latest_checkpoint,
    load_checkpoint,
    load_state_dict_strict,
    module_weights,
    resolve_resume,
    save_checkpoint,
)
from posttrain.run.faults import InjectedFault, fault_point
from posttrain.run.metrics import MetricsLogger, read_metrics
from posttrain.run.progress import progress
from posttrain.run.rng import capture_rng, restore_rng

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "ConfigDriftError",
    "InjectedFault",
    "MetricsLogger",
    "capture_rng",
    "check_config_drift",
    "config_fingerprint",
    "fault_point",
    "find_latest_checkpoint",
    "load_checkpoint",
    "load_state_dict_strict",
    "module_weights",
    "progress",
    "read_metrics",
    "resolve_resume",
    "restore_rng",
    "save_checkpoint",
]
