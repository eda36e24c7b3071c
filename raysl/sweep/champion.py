"""The registry alias that downstream users load (``models:/NAME@champion``), moved only on merit.

A sweep registers its best encoder as a new version, then moves the alias to it only if it beats
the current champion *on the same evaluation*: both are scored now, on the same split with the
same protocol, rather than trusting numbers measured at different times on different data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from raysl.sweep.spec import metric_text


class NotComparable(Exception):
    """The current champion cannot be scored on this evaluation (e.g. other image channels)."""


@dataclass(frozen=True)
class ChampionDecision:
    """What happened to the alias, and why (printed in the summary and tagged on the run)."""

    promoted: bool
    alias: str
    champion_version: str  # the version holding the alias afterwards ("" if none)
    challenger_version: str
    challenger_score: float
    incumbent_version: str = ""  # the version that held the alias before ("" if none)
    incumbent_score: float | None = None
    reason: str = ""

    def summary(self, name: str, metric: str) -> str:
        """One line: ``champion -> models:/m/3: knn_top1 81.20% > 80.10% of version 2``."""
        where = f"models:/{name}@{self.alias}"
        if self.promoted:
            return f"{where} -> version {self.champion_version}: {self.reason}"
        return f"{where} stays on version {self.champion_version}: {self.reason}"


def alias_version(client: MlflowClient, name: str, alias: str) -> str:
    """The version ``alias`` points to, or "" if the alias (or the model) does not exist."""
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return ""


def crown(client: MlflowClient, name: str, alias: str, challenger_version: str, metric: str,
          score: Callable[[str], float]) -> ChampionDecision:
    """Move ``alias`` to ``challenger_version`` if it scores higher than the current holder.

    Args:
        client: the registry.
        name: registered model name.
        alias: e.g. ``champion``.
        challenger_version: the version just registered.
        metric: name of what ``score`` measures (for the messages).
        score: ``models:/NAME/VERSION`` -> the metric on this sweep's evaluation (higher is
            better); raises :class:`NotComparable` if that model cannot be evaluated on it.
    """
    incumbent = alias_version(client, name, alias)
    challenger_score = score(f"models:/{name}/{challenger_version}")
    ours = f"{metric} {metric_text(metric, challenger_score)}"
    if not incumbent:
        client.set_registered_model_alias(name, alias, challenger_version)
        return ChampionDecision(True, alias, challenger_version, challenger_version,
                                challenger_score, reason=f"{ours}; there was no {alias} yet")
    if incumbent == challenger_version:
        return ChampionDecision(False, alias, incumbent, challenger_version, challenger_score,
                                incumbent, challenger_score, "already the champion")
    try:
        incumbent_score = score(f"models:/{name}/{incumbent}")
    except NotComparable as e:
        return ChampionDecision(False, alias, incumbent, challenger_version, challenger_score,
                                incumbent, None, f"version {incumbent} cannot be evaluated the "
                                f"same way ({e}); move the alias by hand if you mean to")
    theirs = f"{metric_text(metric, incumbent_score)} of version {incumbent}"
    if challenger_score > incumbent_score:
        client.set_registered_model_alias(name, alias, challenger_version)
        return ChampionDecision(True, alias, challenger_version, challenger_version,
                                challenger_score, incumbent, incumbent_score,
                                f"{ours} > {theirs}")
    return ChampionDecision(False, alias, incumbent, challenger_version, challenger_score,
                            incumbent, incumbent_score,
                            f"version {challenger_version}'s {ours} does not beat {theirs}")
