"""Figures people would rather see than read: embeddings, confusion matrices, histograms.

Per-class tables too; histograms show DeepCluster's cluster sizes.

Figures are returned as PNG bytes (matplotlib's Agg backend, no display needed), so callers can
log them to MLflow or write them anywhere.
"""

from __future__ import annotations

import io

import numpy as np

from raysl.eval.splits import label_subset

MAX_CONFUSION_CLASSES = 50  # a larger confusion matrix is not readable as a figure


def project_2d(features: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """(N, D) -> ((N, 2), method name): t-SNE (scikit-learn) on the top 50 PCA components.

    PCA first, as the t-SNE authors advise for speed and noise; plain PCA if scikit-learn is
    missing or there are too few points for t-SNE's perplexity.
    """
    x = features.astype(np.float32)
    x = x - x.mean(0)
    # PCA by SVD: no dependency, deterministic up to sign.
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    pcs = x @ vt[:min(50, vt.shape[0])].T
    if len(x) < 40:
        return pcs[:, :2] if pcs.shape[1] >= 2 else np.pad(pcs, ((0, 0), (0, 1))), "PCA"
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        return pcs[:, :2], "PCA"
    perplexity = min(30.0, (len(x) - 1) / 3)
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    return tsne.fit_transform(pcs), "t-SNE"


def _png(fig: object) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")  # type: ignore[attr-defined]
    plt.close(fig)  # type: ignore[arg-type]
    return buf.getvalue()


def embedding_png(features: np.ndarray, labels: np.ndarray, class_names: list[str],
                  title: str, max_points: int = 2000, seed: int = 0) -> bytes:
    """A 2-D projection of (N, D) features coloured by label, as PNG bytes.

    At most ``max_points`` points, a stratified sample so every class stays visible.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(labels) > max_points:
        idx = label_subset(labels, max_points / len(labels), seed)
        features, labels = features[idx], labels[idx]
    xy, how = project_2d(features, seed)
    fig, ax = plt.subplots(figsize=(7, 6))
    cmap = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    for c in np.unique(labels):
        pts = xy[labels == c]
        name = class_names[c] if c < len(class_names) else str(c)
        ax.scatter(pts[:, 0], pts[:, 1], s=4, color=cmap(c % cmap.N), label=name)
    ax.set_title(f"{title}\n{how} of {len(labels)} held-out features")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(markerscale=4, fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
    return _png(fig)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int
                     ) -> np.ndarray:
    """(C, C) counts: row = true class, column = predicted class."""
    m = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(m, (labels, predictions), 1)
    return m


def confusion_png(matrix: np.ndarray, class_names: list[str], title: str) -> bytes:
    """The confusion matrix, row-normalised (recall per class), as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    n = len(matrix)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * n, 0.8 + 0.5 * n))
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    names = [class_names[i] if i < len(class_names) else str(i) for i in range(n)]
    ax.set_xticks(range(n), names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(n), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{rates[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if rates[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title)
    return _png(fig)


def per_class_table(matrix: np.ndarray, class_names: list[str]) -> str:
    """Markdown table of per-class accuracy (recall) and support, worst class first."""
    support = matrix.sum(1)
    acc = np.diag(matrix) / np.maximum(support, 1)
    rows = ["| class | accuracy | images |", "|---|---:|---:|"]
    for i in np.argsort(acc, kind="stable"):
        name = class_names[i] if i < len(class_names) else str(i)
        rows.append(f"| {name} | {100 * acc[i]:.2f}% | {support[i]} |")
    return "\n".join(rows) + "\n"


def sizes_png(sizes: np.ndarray, title: str, what: str = "cluster") -> bytes:
    """Counts per bin (e.g. images per cluster) as bars, largest first, as PNG bytes.

    Sorted, because the names of clusters mean nothing: what matters is how even they are.
    The dashed line is the size every bin would have if they were all equal.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ordered = np.sort(np.asarray(sizes))[::-1]
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.bar(np.arange(len(ordered)), ordered, width=1.0, color="#4878a8")
    ax.axhline(ordered.sum() / max(1, len(ordered)), color="black", linestyle="--", linewidth=1,
               label="all equal")
    ax.set_xlabel(f"{what}s, largest first ({int((ordered == 0).sum())} empty)")
    ax.set_ylabel("images")
    ax.legend(fontsize=7)
    ax.set_title(title)
    return _png(fig)
