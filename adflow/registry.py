"""Model registry: MLflow versions and aliases (`champion`, `challenger`), with a promotion history.

    adflow model promote ctr-ciubm --to champion --reason "won the A/B test"   # default: the challenger
    adflow model rollback ctr-ciubm --reason "alert on CTR"
    adflow model history ctr-ciubm

MLflow keeps no history of alias moves (mlflow issue 2169). Every move made through here is recorded as a
tag on the registered model (`adflow.history.<time>-<id>`: who, when, action, alias, from and to version,
reason, gate report), so the history lives in the registry's own database, locally and on a cluster.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from adflow.tracking import client

HISTORY_PREFIX = "adflow.history."
CHAMPION, CHALLENGER = "champion", "challenger"


class RegistryError(ValueError):
    pass


@dataclass
class Move:
    at: str
    who: str
    action: str  # register | promote | rollback
    alias: str
    from_version: int | None
    to_version: int
    reason: str
    gate_report: str | None = None


def who() -> str:
    return os.environ.get("ADFLOW_USER") or getpass.getuser()


def alias_version(c: Any, name: str, alias: str) -> int | None:
    from mlflow.exceptions import MlflowException

    try:
        return int(c.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def _record(c: Any, name: str, move: Move) -> Move:
    key = f"{HISTORY_PREFIX}{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%S%f')}-{uuid.uuid4().hex[:6]}"
    c.set_registered_model_tag(name, key, json.dumps(asdict(move), sort_keys=True))
    return move


def move_alias(
    c: Any,
    name: str,
    alias: str,
    version: int,
    reason: str,
    action: str = "promote",
    gate_report: str | None = None,
    by: str | None = None,
) -> Move:
    """Point `alias` at `version` and record the move; `by`: who (default: this process's user)."""
    versions = {int(v.version) for v in c.search_model_versions(f"name = '{name}'")}
    if version not in versions:
        raise RegistryError(f"{name} has no version {version} (versions: {sorted(versions) or 'none'})")
    if not reason.strip():
        raise RegistryError("a reason is required for every alias move")
    before = alias_version(c, name, alias)
    c.set_registered_model_alias(name, alias, str(version))
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return _record(c, name, Move(now, by or who(), action, alias, before, version, reason, gate_report))


def history(c: Any, name: str) -> list[Move]:
    model = c.get_registered_model(name)
    items = sorted((k, v) for k, v in model.tags.items() if k.startswith(HISTORY_PREFIX))
    return [Move(**json.loads(v)) for _, v in items]


def promote(
    tracking_uri: str,
    name: str,
    reason: str,
    version: int | None = None,
    to: str = CHAMPION,
    by: str | None = None,
) -> Move:
    """Move `to` (default champion) to `version` (default: the current challenger)."""
    c = client(tracking_uri)
    if version is None:
        version = alias_version(c, name, CHALLENGER)
        if version is None:
            raise RegistryError(f"{name} has no '{CHALLENGER}' to promote: give --version")
    return move_alias(c, name, to, version, reason, "promote", by=by)


def rollback(tracking_uri: str, name: str, reason: str, alias: str = CHAMPION, by: str | None = None) -> Move:
    """Point `alias` back at the version it held before its latest move."""
    c = client(tracking_uri)
    current = alias_version(c, name, alias)
    moves = [m for m in history(c, name) if m.alias == alias]
    if current is None or not moves:
        raise RegistryError(f"{name}@{alias} has no recorded move to roll back")
    previous = next(
        (m.from_version for m in reversed(moves) if m.to_version == current and m.from_version), None
    )
    if previous is None:
        raise RegistryError(f"{name}@{alias} (version {current}) has no earlier version to roll back to")
    return move_alias(c, name, alias, previous, reason, "rollback", by=by)


def register(
    tracking_uri: str,
    run_id: str,
    predictor_path: str,
    name: str,
    tags: dict[str, str],
    pip_requirements: list[str],
) -> int:
    """Log a pickled CTRPredictor as an MLflow pytorch model in `run_id` and register it; returns the version."""
    import mlflow
    import torch

    predictor = torch.load(predictor_path, weights_only=False)
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id):
        # pickle keeps our class (torch.export would hand back a GraphModule); explicit requirements skip the
        # 11-18 s requirement inference (FIELD-NOTES)
        info = mlflow.pytorch.log_model(
            predictor, name="model", serialization_format="pickle", pip_requirements=pip_requirements
        )
    mv = mlflow.register_model(info.model_uri, name, tags=tags)
    return int(mv.version)


def load(tracking_uri: str, name: str, alias_or_version: str) -> Any:
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    ref = (
        f"models:/{name}/{alias_or_version}"
        if alias_or_version.isdigit()
        else f"models:/{name}@{alias_or_version}"
    )
    return mlflow.pytorch.load_model(ref)
