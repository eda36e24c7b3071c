"""The generated datasets (raysl/data/generated.py), made in memory: no Ray needed."""

import colorsys

import numpy as np

from raysl.data import generated


def test_colour_shapes_have_their_class_hue_and_the_shapes_form():
    images, labels = generated.colour_shapes(64, seed=3)
    gray, same_labels = generated.shapes(64, seed=3)
    assert images.shape == (64, 32, 32, 3) and np.array_equal(labels, same_labels)
    fg = gray[..., 0] >= gray[..., 0].mean(axis=(1, 2), keepdims=True)
    for image, label, mask in zip(images, labels, fg, strict=True):
        r, g, b = image[mask].astype(np.float64).mean(axis=0) / 255
        hue, saturation, _ = colorsys.rgb_to_hsv(r, g, b)
        off = (hue - generated.CLASS_HUES[label] + 0.5) % 1.0 - 0.5
        assert abs(off) < 1 / 32 + 0.01 and saturation > 0.3, (label, hue)
    # The gray levels became the value (the largest channel): the form is still there to see.
    value = images.max(axis=-1).astype(np.int64)
    assert np.abs(value - gray[..., 0]).max() <= 1
