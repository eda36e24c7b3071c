import io

import numpy as np
from PIL import Image

from raysl.eval import plots


def _is_png(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(io.BytesIO(data))
    img.verify()
    return Image.open(io.BytesIO(data)).size


def test_embedding_plot_is_a_valid_png():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 200)
    feats = rng.normal(size=(600, 16)) + labels[:, None] * 3.0
    w, h = _is_png(plots.embedding_png(feats, labels, ["a", "b", "c"], "test", max_points=90))
    assert w > 200 and h > 200


def test_tsne_separates_clusters_in_2d():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(2), 50)
    feats = rng.normal(size=(100, 8)) + labels[:, None] * 10.0
    xy, how = plots.project_2d(feats)
    assert how == "t-SNE" and xy.shape == (100, 2)
    a, b = xy[labels == 0].mean(0), xy[labels == 1].mean(0)
    spread = max(xy[labels == 0].std(), xy[labels == 1].std())
    assert np.linalg.norm(a - b) > 2 * spread


def test_few_points_fall_back_to_pca():
    xy, how = plots.project_2d(np.random.default_rng(0).normal(size=(10, 5)))
    assert how == "PCA" and xy.shape == (10, 2)


def test_confusion_matrix_counts_and_table():
    y = np.array([0, 0, 1, 1, 1, 2])
    p = np.array([0, 1, 1, 1, 2, 2])
    m = plots.confusion_matrix(y, p, 3)
    assert m.tolist() == [[1, 1, 0], [0, 2, 1], [0, 0, 1]]
    table = plots.per_class_table(m, ["cat", "dog", "owl"])
    rows = table.strip().splitlines()[2:]
    assert rows[0].startswith("| cat | 50.00%") and rows[-1].startswith("| owl | 100.00%")
    _is_png(plots.confusion_png(m, ["cat", "dog", "owl"], "test"))


def test_sizes_plot_is_a_png_even_with_empty_bins():
    png = plots.sizes_png(np.array([5, 0, 12, 3]), "cluster sizes, epoch 1")
    assert Image.open(io.BytesIO(png)).format == "PNG"
