"""Temperature scaling, operating points chosen on val, the prevalence table and test-time augmentation (pure
functions, no training)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lungxray.core.errors import LungxrayError
from lungxray.evaluate.metrics import expected_calibration_error
from lungxray.evaluate.metrics.operating import at_prevalence, decision_metrics, prevalence_table
from lungxray.evaluate.tta import VIEWS, tta_proba, view_fn
from lungxray.models.calibration import (
    CalibrationParams,
    choose_operating_points,
    fit_on_val,
    fit_temperature,
    nll,
    sensitivity_threshold,
    softmax_t,
    youden_threshold,
)

from helpers.trained import as_trained


def calibrated_sample(n=20000, c=3, seed=0):
    """Logits whose softmax is exactly the probability the labels were drawn with (T = 1 is right)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, c)) * 2.0
    p = softmax_t(z)
    y = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    return z, y


# ---------------------------------------------------------------------------------------------------------------------
# temperature scaling


def test_temperature_scaling_recovers_the_temperature_that_made_the_logits_overconfident():
    z, y = calibrated_sample()
    assert fit_temperature(z * 2.5, y) == pytest.approx(2.5, rel=0.05)
    assert fit_temperature(z * 0.5, y) == pytest.approx(0.5, rel=0.05)


def test_temperature_scaling_lowers_the_ece_and_nll_of_an_overconfident_model_without_changing_its_predictions():
    z, y = calibrated_sample(seed=1)
    over = z * 3.0
    t = fit_temperature(over, y)
    before, after = expected_calibration_error(y, softmax_t(over)), expected_calibration_error(y, softmax_t(over, t))
    assert after < before / 3
    assert nll(over, y, t) < nll(over, y)
    assert (softmax_t(over, t).argmax(1) == softmax_t(over).argmax(1)).all()


def test_calibration_none_keeps_temperature_one_and_still_chooses_operating_points():
    z, y = calibrated_sample(n=500)
    stored = fit_on_val(z * 3, y, ["a", "b", "c"], CalibrationParams(method="none"))
    assert stored["temperature"] == 1.0
    assert {"argmax", "a@sens95", "a@youden"} <= set(stored["operating_points"])
    assert fit_on_val(z * 3, y, ["a", "b", "c"], CalibrationParams())["temperature"] > 2


def test_non_finite_logits_cannot_be_calibrated_and_say_what_to_do():
    with pytest.raises(LungxrayError, match="calibration.method: none"):
        fit_temperature(np.array([[np.nan, 0.0], [1.0, 0.0]]), np.array([0, 1]))


# ---------------------------------------------------------------------------------------------------------------------
# operating points


def test_the_sensitivity_threshold_is_the_highest_that_reaches_the_target_on_val():
    scores = np.r_[np.arange(1, 101) / 100, np.full(50, 0.03)]  # 100 positives 0.01..1.00, 50 negatives
    pos = np.r_[np.ones(100, bool), np.zeros(50, bool)]
    t = sensitivity_threshold(scores, pos, 0.95)
    assert t == pytest.approx(0.055)  # 0.06..1.00 are 95 of 100 positives; midway to the next lower score, 0.05
    assert (scores[pos] >= t).mean() >= 0.95 and (scores[pos] >= 0.07).mean() < 0.95
    op = choose_operating_points(pos.astype(int) ^ 1, np.c_[scores, 1 - scores], ["p", "n"], 0.95)["p@sens95"]
    assert op["threshold"] == pytest.approx(0.055) and op["val_sensitivity"] == pytest.approx(0.95)
    assert op["val_specificity"] == 1.0


def test_the_youden_threshold_maximises_sensitivity_plus_specificity_on_val():
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.45, 0.6, 0.7, 0.8])
    pos = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1], bool)
    assert youden_threshold(scores, pos) == pytest.approx(0.425)  # at 0.45: sens 1, spec 4/5; midway to 0.4
    rng = np.random.default_rng(3)
    s, p = rng.random(300), rng.random(300) < 0.4
    s[p] += 0.3
    j = [(s[p] >= t).mean() + (s[~p] < t).mean() for t in np.unique(s)]
    best = youden_threshold(s, p)
    assert (s[p] >= best).mean() + (s[~p] < best).mean() == pytest.approx(max(j))


def test_a_class_missing_from_val_gets_no_threshold():
    ops = choose_operating_points(np.array([0, 0, 1, 1]), np.full((4, 3), 1 / 3), ["a", "b", "c"], 0.95)
    assert set(ops) == {"argmax", "a@sens95", "a@youden", "b@sens95", "b@youden"}


# ---------------------------------------------------------------------------------------------------------------------
# prevalence shift and figures at an operating point


def test_ppv_and_npv_at_a_prevalence_follow_bayes_rule():
    r = at_prevalence(0.9, 0.8, 0.1)
    assert r["ppv"] == pytest.approx(0.09 / (0.09 + 0.18))
    assert r["npv"] == pytest.approx(0.72 / (0.72 + 0.01))
    assert r["accuracy"] == pytest.approx(0.09 + 0.72)


def test_the_prevalence_table_has_the_val_test_and_set_prevalences_of_every_operating_point():
    val = {"p@youden": {"p": {"sensitivity": 0.9, "specificity": 0.8}}}
    rows = prevalence_table(val, {"p": {"val": 0.74, "test": 0.625}}, [0.05, 0.5])
    assert [(r["at"], r["prevalence"]) for r in rows] == [("val prevalence", 0.74), ("test prevalence", 0.625),
                                                         ("set", 0.05), ("set", 0.5)]
    assert rows[2]["ppv"] < rows[0]["ppv"]  # the rarer the class, the lower the PPV of the same rule


def test_figures_at_an_operating_point_count_flags_and_bracket_them_with_a_bootstrap_interval():
    y = np.r_[np.ones(40, int), np.zeros(60, int)]
    flag = np.r_[np.ones(36, bool), np.zeros(4, bool), np.ones(6, bool), np.zeros(54, bool)]
    m = decision_metrics(y, flag, 1, resamples=300, ci=0.95, seed=0)
    assert (m["sensitivity"], m["specificity"], m["ppv"]) == (0.9, 0.9, 36 / 42)
    assert m["sensitivity_ci_low"] < 0.9 < m["sensitivity_ci_high"]
    assert m["specificity_ci_low"] < 0.9 < m["specificity_ci_high"]


# ---------------------------------------------------------------------------------------------------------------------
# test-time augmentation


class SideDetector(nn.Module):
    """Logit of class 0: 40 x (mean of one half - mean of the other half) of channel 0 (top-bottom or left-right)."""

    def __init__(self, axis: int):
        super().__init__()
        self.axis = axis

    def forward(self, x):
        a, b = x[:, 0].chunk(2, dim=self.axis - 1)
        d = (a.mean(dim=(1, 2)) - b.mean(dim=(1, 2))) * 40
        return torch.stack([d, torch.zeros_like(d)], 1)


def half_bright(axis: int, n: int = 4, size: int = 32) -> np.ndarray:
    imgs = np.full((n, size, size), 40, np.uint8)
    if axis == 2:
        imgs[:, : size // 2] = 220  # the top half
    else:
        imgs[:, :, : size // 2] = 220  # the left half
    return imgs


@pytest.mark.parametrize("mode", ["shifts", "flips_shifts"])
def test_test_time_augmentation_never_flips_an_image_upside_down(mode):
    imgs = half_bright(axis=2)
    plain = tta_proba(as_trained(SideDetector(axis=2), mean=0.0, std=1.0), imgs, mode, batch_size=2)
    assert plain[:, 0].min() > 0.99  # one upside-down view among the 7-8 would pull the mean below 0.9


def test_flips_shifts_adds_the_horizontal_mirror_and_shifts_move_the_content():
    imgs = half_bright(axis=3)
    assert tta_proba(as_trained(SideDetector(axis=3), mean=0.0, std=1.0), imgs, "shifts")[:, 0].min() > 0.99
    mirrored = tta_proba(as_trained(SideDetector(axis=3), mean=0.0, std=1.0), imgs, "flips_shifts")[:, 0]
    assert mirrored == pytest.approx(np.full(4, 7 / 8), abs=0.01)  # 7 views say left, the mirror says right
    x = torch.zeros(1, 1, 25, 25)
    x[0, 0, 12, 12] = 1
    up = view_fn(False, 1.0, 0.0, -0.04)(x)[0, 0]
    assert up[11, 12] == pytest.approx(1.0)  # one pixel (4% of 25) up, nothing moved sideways
    assert [v[0] for v in VIEWS["flips_shifts"]][-1] == "hflip"
