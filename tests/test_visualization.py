"""Colour-blind-safe palette, legends and the TP/FP/FN error map (#11.11)."""

from __future__ import annotations

import numpy as np

from losam_peft.visualization import (
    ERROR_COLOURS,
    comparison_panel,
    error_counts,
    error_map,
    overlay,
    palette,
)

OKABE_ITO = [(86, 180, 233), (230, 159, 0), (0, 158, 115), (240, 228, 66), (0, 114, 178), (213, 94, 0),
             (204, 121, 167)]  # fmt: skip


def _simulate_deuteranopia(rgb):
    """A coarse check of separability: the colours' lightness and blue-yellow axis (what red-green colour-blind
    readers keep) must differ between any two of them."""
    r, g, b = (c / 255 for c in rgb)
    lightness = 0.299 * r + 0.587 * g + 0.114 * b
    blue_yellow = b - (r + g) / 2
    return np.array([lightness, blue_yellow])


def test_classes_take_the_okabe_ito_palette_after_black_background():
    colours = [tuple(int(v) for v in c) for c in palette(8)]
    assert colours[0] == (0, 0, 0) and colours[1:] == OKABE_ITO
    assert len({tuple(c) for c in palette(20)}) == 20  # more classes still get distinct colours
    # with red and green confused, the first classes still differ in lightness or on the blue-yellow axis
    kept = [_simulate_deuteranopia(c) for c in OKABE_ITO[:5]]
    for i in range(len(kept)):
        for j in range(i + 1, len(kept)):
            assert np.abs(kept[i] - kept[j]).max() > 0.08, (OKABE_ITO[i], OKABE_ITO[j])


def test_error_map_colours_and_counts():
    truth = np.array([[0, 0, 1, 1], [0, 1, 1, 255], [2, 2, 0, 0]])
    prediction = np.array([[0, 1, 1, 0], [0, 1, 2, 1], [2, 0, 0, 1]])
    counts = error_counts(prediction, truth)
    assert counts == {"true positive": 3, "false positive": 2, "false negative": 2, "wrong class": 1,
                      "true negative": 3, "outside the field of view": 1}  # fmt: skip
    picture = np.asarray(error_map(prediction, truth, legend=False))
    assert tuple(picture[0, 2]) == ERROR_COLOURS["true positive"]
    assert tuple(picture[0, 1]) == ERROR_COLOURS["false positive"]
    assert tuple(picture[0, 3]) == ERROR_COLOURS["false negative"]
    assert tuple(picture[1, 2]) == ERROR_COLOURS["wrong class"]
    assert tuple(picture[1, 3]) == ERROR_COLOURS["outside the field of view"]
    fov = np.ones_like(truth, bool)
    fov[:, 0] = False
    assert error_counts(prediction, truth, fov)["outside the field of view"] == 4


def test_overlay_legend_names_the_classes_and_keeps_the_size():
    image = np.full((80, 120, 3), 128, np.uint8)
    labels = np.zeros((80, 120), np.int64)
    labels[10:20, 60:100] = 1
    plain = overlay(image, labels, alpha=1.0, num_labels=2)
    legend = overlay(image, labels, alpha=1.0, num_labels=2, legend={0: "background", 1: "vessel"})
    assert plain.size == legend.size == (120, 80)
    lower_left = np.asarray(legend)[50:, :50]
    assert (lower_left == 255).all(axis=-1).any()  # the legend's white box
    assert (lower_left == palette(2)[1]).all(axis=-1).any()  # with the vessel swatch
    assert np.array_equal(np.asarray(plain)[:40], np.asarray(legend)[:40])  # nothing else changes


def test_comparison_panel_with_error_map_and_legend_row():
    image = np.zeros((32, 32, 3), np.uint8)
    truth = np.zeros((32, 32), np.int64)
    truth[5:15, 5:15] = 1
    prediction = np.zeros_like(truth)
    prediction[8:20, 8:20] = 1
    three = comparison_panel(image, truth, prediction, num_labels=2)
    four = comparison_panel(image, truth, prediction, num_labels=2, errors=True, id2label={0: "bg", 1: "vessel"})
    assert four.width > three.width and four.height > three.height  # a fourth panel and a legend row
    pixels = np.asarray(four)
    for kind in ("true positive", "false positive", "false negative"):
        assert (pixels == ERROR_COLOURS[kind]).all(axis=-1).any(), kind
