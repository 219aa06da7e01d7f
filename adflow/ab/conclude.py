"""End an experiment with a winner, and optionally make the winner's model the registry champion.

One function for the CLI (`adflow ab conclude --promote`) and the console: everything is checked before anything
is written, so a bad arm or a model reference that names no version refuses the whole action.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from adflow import registry
from adflow.ab.store import ABError, ABStore, Experiment


@dataclass
class Concluded:
    experiment: Experiment
    winner_model: str  # the arm's registry reference, e.g. "alias:challenger"
    move: registry.Move | None  # the champion move, when asked to promote


def version_of(c: Any, model: str, ref: str) -> int | None:
    """The version an arm's reference names now: "alias:champion", "version:3" or "3"."""
    kind, _, value = ref.rpartition(":")
    if kind == "version" or value.isdigit():
        return int(value) if value.isdigit() else None
    return registry.alias_version(c, model, value)


def conclude(
    store: ABStore, name: str, winner: str, reason: str, tracking_uri: str, model: str, promote: bool,
    by: str | None = None,
) -> Concluded:  # fmt: skip
    # every refusal, the registry's included, comes before the first write: a conclusion written before a
    # refused promotion would send all traffic to the winner's model when that model cannot even be loaded
    exp = store.concludable(name, winner)
    arm = next(a for a in exp.arms if a.name == winner)
    if not reason.strip():
        raise ABError(f"a reason is required to conclude {name} (it is recorded with the winner)")
    version = None
    if promote:
        from adflow.tracking import client

        c = client(tracking_uri)
        version = version_of(c, model, arm.model)
        if version is None:
            raise ABError(f"{arm.model} does not name a version of {model}")
        versions = {int(v.version) for v in c.search_model_versions(f"name = '{model}'")}
        if version not in versions:
            raise ABError(
                f"{arm.model} names version {version} of {model}, which the registry does not have "
                f"(versions: {sorted(versions) or 'none'}): nothing was concluded or promoted"
            )
    # the experiment first: its status change is what refuses a second, concurrent conclusion before it could
    # move the champion too; the promotion after it can now only fail on an unreachable registry
    exp = store.conclude(name, winner, reason)
    move = None
    if version is not None:
        move = registry.promote(tracking_uri, model, f"won A/B test {name}: {reason}", version, by=by)
    return Concluded(exp, arm.model, move)
