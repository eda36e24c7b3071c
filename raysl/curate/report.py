"""What ``raysl curate`` did, as numbers (JSON) and one picture (no Ray)."""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class CurateReport:
    """Counts of a curation, for the terminal, ``report.json`` and MLflow.

    Attributes:
        embedded: images embedded (bad files excluded).
        skipped: bad files per reason (not embedded).
        removed: duplicates removed per reason (``exact``, ``near``).
        clustered: images left to cluster after deduplication.
        clusters: clusters per level, level 1 first.
        target: images asked for.
        selected: images drawn (``min(target, clustered)``).
        top_before: (k_top,) images per top-level cluster before sampling.
        top_after: (k_top,) images per top-level cluster in the selection.
        leaf_before: (k_1,) images per level-1 cluster before sampling.
        leaf_after: (k_1,) images per level-1 cluster in the selection.
        classes_before: images per label after deduplication (labeled sources only).
        classes_after: images per label in the selection (labeled sources only).
        seconds: wall clock per stage (embed, dedup, cluster, select).
    """

    embedded: int
    skipped: dict[str, int]
    removed: dict[str, int]
    clustered: int
    clusters: list[int]
    target: int
    selected: int
    top_before: list[int]
    top_after: list[int]
    leaf_before: list[int]
    leaf_after: list[int]
    classes_before: dict[int, int] = field(default_factory=dict)
    classes_after: dict[int, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (class keys as strings)."""
        out = asdict(self)
        out["classes_before"] = {str(k): v for k, v in self.classes_before.items()}
        out["classes_after"] = {str(k): v for k, v in self.classes_after.items()}
        return out

    def metrics(self) -> dict[str, float]:
        """The counts as MLflow metrics (``curate/...``)."""
        m = {"curate/embedded": float(self.embedded), "curate/clustered": float(self.clustered),
             "curate/selected": float(self.selected),
             "curate/skipped": float(sum(self.skipped.values()))}
        m.update({f"curate/removed_{k}": float(v) for k, v in self.removed.items()})
        m.update({f"curate/seconds_{k}": v for k, v in self.seconds.items()})
        return m

    def lines(self) -> list[str]:
        """One line per fact, for the terminal."""
        out = [f"[raysl] embedded {self.embedded} images"
               + (f" (skipped {sum(self.skipped.values())} bad files {self.skipped})"
                  if self.skipped else ""),
               f"[raysl] removed {self.removed.get('exact', 0)} exact and "
               f"{self.removed.get('near', 0)} near duplicates: {self.clustered} left",
               f"[raysl] clustered them into {' -> '.join(map(str, self.clusters))} clusters "
               f"(level 1 first); drew {self.selected} of the {self.target} asked for, "
               f"top-level clusters {_spread(self.top_before)} -> {_spread(self.top_after)}"]
        if self.classes_before:
            before = _spread(list(self.classes_before.values()))
            after = _spread(list(self.classes_after.values()))
            out.append(f"[raysl] labels (report only): {before} -> {after} images per class")
        if self.seconds:
            out.append("[raysl] took " + ", ".join(f"{k} {v:.1f} s"
                                                    for k, v in self.seconds.items()))
        return out


def _spread(sizes: list[int]) -> str:
    """``min-max`` of the non-empty sizes."""
    nonzero = [s for s in sizes if s] or [0]
    return f"{min(nonzero)}-{max(nonzero)}"


def report_png(report: CurateReport) -> bytes:
    """Cluster sizes before and after (top level, level 1) and, if labeled, the classes: PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("top-level clusters", report.top_before, report.top_after),
              ("level-1 clusters", report.leaf_before, report.leaf_after)]
    if report.classes_before:
        keys = sorted(report.classes_before)
        panels.append(("classes (labels, report only)", [report.classes_before[k] for k in keys],
                       [report.classes_after.get(k, 0) for k in keys]))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.2))
    for ax, (title, before, after) in zip(np.atleast_1d(axes), panels, strict=True):
        order = np.argsort(before)[::-1]  # largest first: what matters is how even they are
        x = np.arange(len(order))
        ax.bar(x, np.asarray(before)[order], width=1.0, color="#bbbbbb", label="before")
        ax.bar(x, np.asarray(after)[order], width=0.6, color="#4878a8", label="selected")
        ax.set_yscale("log")
        ax.set_xlabel(f"{title}, largest first")
        ax.set_ylabel("images")
        ax.legend(fontsize=7)
        ax.set_title(title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()
