"""The figures draw what they claim: best step marked, clipped twins in their twin's colour, the
paper's values as markers on a log axis, Fig. 1's three probes."""

from __future__ import annotations

import pytest
from matplotlib.colors import to_rgba

from pipeline import figures

IDENT = {"sweep": "f", "label": None, "workload": "translation", "algorithm": "sgd", "clip_fraction": 0.0,
         "clip_target": "grad", "hparams": "{}", "lr": 0.1}


def _lines(fig):
    return [line for ax in fig.axes for line in ax.get_lines()]


def test_clipped_variant_takes_its_twins_colour_at_lower_opacity():
    styles = figures.family_styles(["sgd", "adam", "adam_clip0.5", "adam_clipupdate0.5", "mine"])
    assert styles["adam_clip0.5"]["color"] == styles["adam"]["color"] == styles["adam_clipupdate0.5"]["color"]
    assert styles["adam_clip0.5"]["alpha"] < styles["adam"]["alpha"] == 1.0
    assert len({styles[k]["color"] for k in ("sgd", "adam", "mine")}) == 3


def test_landscape_marks_each_lines_lowest_point():
    # loss change along adam's direction: (offset - 0.3)^2 - 0.09 on a grid; the minimum is at 0.25.
    offsets = (-0.5, 0.0, 0.25, 0.5, 1.0)
    rows = [{**IDENT, "trial_id": "t", "seed": 0, "step": 10, "probe": "adam", "offset": o,
             "loss": 0.0, "loss_change": (o - 0.3) ** 2 - 0.09} for o in offsets]
    fig, = figures.landscape(rows).values()
    stars = [line for line in _lines(fig) if line.get_marker() == "*"]
    assert len(stars) == 1
    assert stars[0].get_xdata()[0] == 0.25 and stars[0].get_ydata()[0] == pytest.approx(0.0025 - 0.09)


def test_sharpness_ratio_is_on_a_log_scale_with_the_papers_values():
    rows = [{**IDENT, "trial_id": "t", "run_id": None, "experiment": "sharpness", "seed": 0, "trajectory": "sgd",
             "step": step, "probe": probe, "ratio_to_sgd": r, "ratio_mean": r, "n_seeds": 1}
            for step in (0, 100) for probe, r in (("sgd", 1.0), ("adam", 0.01), ("adam_clip0.5", 0.001))]
    published = [{"workload": "translation", "trajectory": "sgd", "probe": "adam", "ratio": 3e-4},
                 {"workload": "causal_lm", "trajectory": "sgd", "probe": "adam", "ratio": 0.5}]  # other workload
    fig, = figures.sharpness_ratio(rows, published).values()
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    diamonds = [line for line in ax.get_lines() if line.get_marker() == "D" and len(line.get_xdata())]
    assert [(d.get_xdata()[0], d.get_ydata()[0]) for d in diamonds] == [(100, 3e-4)]  # at the last step
    adam = next(line for line in ax.get_lines() if line.get_label() == "adam")
    assert to_rgba(diamonds[0].get_color())[:3] == to_rgba(adam.get_color())[:3]
    clipped = next(line for line in ax.get_lines() if line.get_label() == "adam_clip0.5")
    assert clipped.get_color() == adam.get_color() and clipped.get_alpha() < 1


def test_fig1_histogram_shows_sgd_adam_and_adafactor():
    rows = [{**IDENT, "trial_id": "t", "seed": 0, "step": 5, "probe": probe, "bin_lo": lo, "bin_hi": lo + 1,
             "count": 3} for probe in ("sgd", "adam", "adafactor", "lion", "adam_clip0.5") for lo in (-3.0, -2.0)]
    fig, = figures.histograms(rows).values()
    labels = [p.get_label() for ax in fig.axes for p in ax.patches]
    assert labels == ["sgd", "adam", "adafactor"]


def test_loss_curves_draw_the_clipped_twin_lighter_in_the_same_colour():
    conv, summary = [], []
    for clip in (0.0, 0.1):
        setting = {**IDENT, "clip_fraction": clip}
        summary.append({**setting, "best_lr": 0.1})
        conv += [{**setting, "trial_id": f"c{clip}-{seed}", "seed": seed, "step": step,
                  "train_loss": 5.0 - step + seed, "test_loss": None} for seed in (0, 1) for step in range(3)]
    fig, = figures.loss_curves(conv, summary).values()
    plain, clipped = sorted(_lines(fig), key=lambda line: line.get_label())
    assert plain.get_label().startswith("sgd ") and clipped.get_label().startswith("sgd_clip0.1")
    assert plain.get_color() == clipped.get_color() and clipped.get_alpha() < plain.get_alpha()
    assert list(plain.get_ydata()) == [5.5, 4.5, 3.5]  # the mean over seeds
    assert len(fig.axes[0].collections) == 2  # a band per setting
