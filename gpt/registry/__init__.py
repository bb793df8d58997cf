"""MLflow tracking and the model registry (see each module; this package only hands names on)."""

from gpt.registry.gate import Bar, GateSpec, comparison_markdown, read_champion, require_finite
from gpt.registry.governance import (
    CHALLENGER,
    CHAMPION,
    champion_history,
    promote,
    registry_lock,
    resolve_alias,
    rollback,
    set_champion,
)
from gpt.registry.models import (
    ModelRef,
    classify,
    export_hf,
    list_versions,
    load_champion_components,
    load_components,
    model_task,
)
from gpt.registry.registration import Candidate, Registration, register
from gpt.registry.tags import HISTORY_TAG, VersionTags
from gpt.registry.tracking import (
    Dataset,
    MetricsLogger,
    Tracking,
    child_run,
    cli_run_name,
    client,
    default_tracking_uri,
    pipeline_run,
    resolve_tracking_uri,
)

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "Bar",
    "Candidate",
    "Dataset",
    "GateSpec",
    "HISTORY_TAG",
    "MetricsLogger",
    "ModelRef",
    "Registration",
    "Tracking",
    "VersionTags",
    "champion_history",
    "child_run",
    "classify",
    "cli_run_name",
    "client",
    "comparison_markdown",
    "default_tracking_uri",
    "export_hf",
    "list_versions",
    "load_champion_components",
    "load_components",
    "model_task",
    "pipeline_run",
    "promote",
    "read_champion",
    "register",
    "registry_lock",
    "require_finite",
    "resolve_alias",
    "resolve_tracking_uri",
    "rollback",
    "set_champion",
]
