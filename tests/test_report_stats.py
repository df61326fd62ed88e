"""The comparison statistics against values worked out by hand (or by brute force written here)."""

from __future__ import annotations

import itertools
import math

import pytest

from optsweep.report import stats


def test_t_interval_of_one_two_three():
    # mean 2, s = 1, t(0.975, 2) = 4.302653 -> half width 4.302653 / sqrt(3) = 2.484138
    interval = stats.t_interval([1.0, 2.0, 3.0])
    assert interval.mean == 2.0 and interval.std == 1.0 and interval.n == 3
    assert interval.low == pytest.approx(2 - 2.484138, abs=1e-6)
    assert interval.high == pytest.approx(2 + 2.484138, abs=1e-6)


@pytest.mark.parametrize(("n", "t"), [(2, 12.706), (4, 3.182)])
def test_t_interval_uses_the_t_quantile_of_n_minus_one(n, t):
    values = [float(i) for i in range(n)]
    s = math.sqrt(sum((v - (n - 1) / 2) ** 2 for v in values) / (n - 1))
    interval = stats.t_interval(values)
    assert interval.high - interval.mean == pytest.approx(t * s / math.sqrt(n), rel=3e-4)


def test_t_interval_of_one_seed_has_no_bounds():
    assert stats.t_interval([3.5]) == stats.Interval(3.5, None, None, 1, None)
    with pytest.raises(ValueError, match="finite"):
        stats.t_interval([1.0, math.inf])


def test_welch_against_the_closed_form_for_four_degrees_of_freedom():
    # a = 1,2,3 and b = 4,5,6: difference -3, variances of the means 1/3 each, t = -3 / sqrt(2/3),
    # df = (2/3)^2 / ((1/3)^2/2 + (1/3)^2/2) = 4. For 4 df, P(|T| < t) = sin(th) (1 + cos(th)^2 / 2) with
    # th = atan(t / 2).
    result = stats.welch([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    assert result.difference == -3.0
    assert result.t == pytest.approx(-3 / math.sqrt(2 / 3))
    assert result.df == pytest.approx(4.0)
    theta = math.atan(abs(result.t) / 2)
    assert result.p == pytest.approx(1 - math.sin(theta) * (1 + math.cos(theta) ** 2 / 2), rel=1e-9)
    assert result.p == pytest.approx(0.02131, abs=1e-5)


def test_welch_unequal_sizes_uses_satterthwaite():
    # a: n 2, var 2 (values 0, 2); b: n 3, var 1 (3, 4, 5): va = 1, vb = 1/3, df = (4/3)^2 / (1/1 + (1/9)/2)
    result = stats.welch([0.0, 2.0], [3.0, 4.0, 5.0])
    assert result.df == pytest.approx((4 / 3) ** 2 / (1 + 1 / 18))
    assert result.t == pytest.approx(-3 / math.sqrt(4 / 3))


def test_welch_without_spread():
    assert stats.welch([1.0, 1.0], [1.0, 1.0]).p == 1.0
    assert stats.welch([1.0, 1.0], [2.0, 2.0]).p == 0.0
    with pytest.raises(ValueError, match=">= 2 values"):
        stats.welch([1.0], [1.0, 2.0])


def test_holm_step_down():
    # sorted: 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04 -> kept monotone at 0.06
    adjusted, rejected = stats.holm([0.01, 0.04, 0.03])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06])
    assert rejected == [True, False, False]
    # stops at the first failure even when a later raw p would pass its own threshold
    adjusted, rejected = stats.holm([0.02, 0.026])  # 0.02 x 2 = 0.04 passes, 0.026 x 1 -> max(0.04, 0.026)
    assert adjusted == pytest.approx([0.04, 0.04]) and rejected == [True, True]
    adjusted, rejected = stats.holm([0.03, 0.04])  # 0.06 fails -> both kept
    assert rejected == [False, False]


def _brute_force_best_of_k(losses, k):
    draws = list(itertools.combinations(losses, k))
    return sum(min(d) for d in draws) / len(draws)


def test_expected_best_of_k_hand_checked_and_by_enumeration():
    losses = [4.0, 1.0, 3.0, 2.0]
    # sorted 1, 2, 3, 4; C(4, 2) = 6; weights C(3,1)=3, C(2,1)=2, C(1,1)=1, C(0,1)=0 -> (3 + 4 + 3) / 6
    assert stats.expected_best_of_k(losses, 2) == pytest.approx(10 / 6)
    assert stats.expected_best_of_k(losses, 1) == pytest.approx(2.5)  # the mean
    assert stats.expected_best_of_k(losses, 4) == 1.0  # every trial: the best
    many = [3.1, 2.7, 2.9, 3.4, 2.8, 3.0, 5.0]
    for k in range(1, len(many) + 1):
        assert stats.expected_best_of_k(many, k) == pytest.approx(_brute_force_best_of_k(many, k))


def test_expected_best_of_k_with_diverged_trials():
    assert stats.expected_best_of_k([1.0, math.inf], 2) == 1.0
    assert stats.expected_best_of_k([1.0, math.inf], 1) == math.inf
    assert stats.expected_best_of_k([1.0, 2.0, math.inf], 2) == pytest.approx((1 + 1 + 2) / 3)
    with pytest.raises(ValueError, match="k=3"):
        stats.expected_best_of_k([1.0, 2.0], 3)


def test_lr_robustness_is_the_contiguous_span_within_two_percent():
    lrs = [1e-4, 1e-3, 1e-2, 1e-1]
    # best 3.0 at 1e-2; limit 3.06: 1e-3 (3.05) is in, 1e-4 and 1e-1 are out -> one decade
    assert stats.lr_robustness_decades(lrs, [3.5, 3.05, 3.0, 3.2]) == pytest.approx(1.0)
    assert stats.lr_robustness_decades(lrs, [3.5, 3.05, 3.0, 3.2], tolerance=0.1) == pytest.approx(2.0)  # limit 3.3: 1e-1 joins
    # a diverged lr in between ends the span; a good lr beyond it does not count
    assert stats.lr_robustness_decades(lrs, [3.0, math.inf, 3.01, 3.0]) == pytest.approx(0.0)
    # two seeds at one lr count by their mean: (3.0 + 3.2) / 2 = 3.1 is out of 3.0 * 1.02
    assert stats.lr_robustness_decades([1e-3, 1e-3, 1e-2], [3.0, 3.2, 3.0]) == 0.0
    assert stats.lr_robustness_decades([1e-3], [math.nan]) == 0.0


def test_divergence_rate():
    assert stats.divergence_rate([1.0, math.nan, math.inf, 2.0]) == 0.5
    assert stats.divergence_rate([1.0]) == 0.0


def test_first_crossing_interpolates_linearly():
    xs, ys = [0.0, 100.0, 200.0], [5.0, 3.0, 1.0]
    assert stats.first_crossing(xs, ys, 2.0) == pytest.approx(150.0)  # 100 + 100 * (3 - 2) / (3 - 1)
    assert stats.first_crossing(xs, ys, 3.0) == 100.0
    assert stats.first_crossing(xs, ys, 6.0) == 0.0
    assert stats.first_crossing(xs, ys, 0.5) is None
    # the first crossing, not the last: the curve goes back up after it
    assert stats.first_crossing([0, 10, 20, 30], [4.0, 2.0, 3.0, 1.0], 2.5) == pytest.approx(7.5)
