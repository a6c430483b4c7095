"""Undoing the class judge's errors in φ (SCIENCE.md §3): closed forms and a simulation."""

from __future__ import annotations

import numpy as np
import pytest

from diffregimes.judge_correction import (
    correctable,
    corrected_phi,
    pair_agreement_map,
    speciation_threshold,
)
from diffregimes.theory import PHI_AT_SPECIATION


def _symmetric(a: float, n: int = 1000) -> np.ndarray:
    """Confusion counts of two balanced classes, accuracy a on each."""
    return np.array([[a, 1 - a], [1 - a, a]]) * n


@pytest.mark.parametrize("a", [0.6, 0.85, 0.95, 1.0])
def test_two_balanced_symmetric_classes_give_the_science_md_formula(a):
    big_a, big_b = pair_agreement_map(_symmetric(a))
    assert big_b == pytest.approx(2 * a * (1 - a), abs=1e-14)
    assert big_a - big_b == pytest.approx((2 * a - 1) ** 2, abs=1e-14)
    phi = np.linspace(0.5, 1, 6)
    phi_obs = 2 * a * (1 - a) + (2 * a - 1) ** 2 * phi  # SCIENCE.md §3
    back, se = corrected_phi(phi_obs, _symmetric(a).tolist(), se=np.full(6, 0.01))
    np.testing.assert_allclose(back, phi, atol=1e-12)
    np.testing.assert_allclose(se, 0.01 / (2 * a - 1) ** 2, rtol=1e-12)


def test_perfect_judge_is_the_identity_and_priors_default_to_row_sums():
    conf = np.diag([50, 30, 20])
    assert pair_agreement_map(conf) == (1.0, 0.0)
    phi, se = corrected_phi(0.8, conf)
    assert phi == pytest.approx(0.8) and se is None
    conf = [[40, 10, 0], [5, 25, 0], [2, 2, 16]]
    assert pair_agreement_map(conf) == pair_agreement_map(conf, priors=[5, 3, 2])
    assert pair_agreement_map(conf) != pair_agreement_map(conf, priors=[1, 1, 1])


def test_the_map_against_the_joint_law_of_a_pair():
    """A, B from the formula against a sum over every (c1, c2, j1, j2)."""
    m = np.array([[0.8, 0.15, 0.05], [0.1, 0.7, 0.2], [0.05, 0.05, 0.9]])
    pi = np.array([0.6, 0.3, 0.1])
    diff = np.outer(pi, pi) * (1 - np.eye(3)) / (1 - np.sum(pi**2))
    same = np.diag(pi)
    for phi in (0.0, 0.4, 1.0):
        joint = phi * same + (1 - phi) * diff  # P(true classes c1, c2)
        want = sum(
            joint[c1, c2] * m[c1, j] * m[c2, j]
            for c1 in range(3)
            for c2 in range(3)
            for j in range(3)
        )
        big_a, big_b = pair_agreement_map(m * 1000, priors=pi)
        assert big_b + (big_a - big_b) * phi == pytest.approx(want, abs=1e-14)


def _simulate(rng, phi, pi, m, n_pairs):
    """Fraction of n_pairs clone pairs the judge labels alike: same true class with prob. φ
    (class ~ π), else two different classes with prob. ∝ π_c1 π_c2; each clone relabelled
    independently by row c of m."""
    k = len(pi)
    c1 = rng.choice(k, size=n_pairs, p=pi)
    c2 = c1.copy()
    diff = rng.random(n_pairs) >= phi
    off = np.outer(pi, pi) * (1 - np.eye(k))
    pairs = rng.choice(k * k, size=int(diff.sum()), p=(off / off.sum()).ravel())
    c1[diff], c2[diff] = pairs // k, pairs % k
    cum = np.cumsum(m, axis=1)

    def judge(c):
        return np.minimum((rng.random(len(c))[:, None] > cum[c]).sum(axis=1), k - 1)

    return float(np.mean(judge(c1) == judge(c2)))


@pytest.mark.parametrize(
    "pi, m",
    [
        ([0.5, 0.5], [[0.9, 0.1], [0.15, 0.85]]),  # K = 2 balanced, asymmetric errors
        ([0.6, 0.3, 0.1], [[0.85, 0.1, 0.05], [0.1, 0.8, 0.1], [0.05, 0.15, 0.8]]),  # K = 3
    ],
)
def test_corrected_phi_recovers_the_true_phi_of_simulated_pairs(pi, m):
    """SE: binomial sqrt(φ_obs(1 − φ_obs)/n) of the observed agreement, scaled by 1/(A − B).
    The judge's confusion matrix is known exactly (counts = 10 000 π_c M[c, j])."""
    rng = np.random.default_rng(11)
    pi, m = np.asarray(pi), np.asarray(m)
    conf = np.round(10_000 * pi[:, None] * m).astype(int)
    n = 20_000
    big_a, big_b = pair_agreement_map(conf)
    assert correctable(conf) is None
    for phi in (0.3, 0.5, 0.7752, 0.9, 1.0):
        obs = _simulate(rng, phi, pi, m, n)
        est, se = corrected_phi(obs, conf, se=np.sqrt(obs * (1 - obs) / n))
        assert abs(est - phi) < 3 * se, (phi, obs, est, se)
        if phi > 0.7:  # uncorrected: off by more than the noise (chance is a fixed point)
            assert abs(obs - phi) > 3 * se


def test_corrected_phi_is_not_clipped():
    phi, _ = corrected_phi([0.0, 1.0], _symmetric(0.9))
    assert phi[0] < 0 and phi[1] > 1


def test_speciation_threshold():
    assert speciation_threshold(0.5) == pytest.approx(PHI_AT_SPECIATION)
    assert speciation_threshold(1.0) == 1.0
    np.testing.assert_allclose(
        speciation_threshold(np.array([1 / 3, 0.1])),
        np.array([1 / 3, 0.1]) + np.array([2 / 3, 0.9]) * (PHI_AT_SPECIATION - 0.5) / 0.5,
    )
    assert speciation_threshold(0.5, phi_star=0.9) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="Σp²"):
        speciation_threshold(0.0)


def test_judges_that_cannot_be_corrected_say_why():
    assert correctable(_symmetric(0.9)) is None
    why = correctable(_symmetric(0.55))
    assert why is not None and "accuracy 0.55" in why
    assert "no confusion matrix" in correctable(None)
    assert "no held-out images" in correctable([[10, 0], [0, 0]])
    assert "K×K" in correctable([[1, 2, 3]])
    # accurate (0.9) on unbalanced data but blind: every image gets the majority class
    why = correctable([[90, 0], [10, 0]])
    assert why is not None and "A − B = 0" in why and "∞" in why
    with pytest.raises(ValueError, match="no class information"):
        corrected_phi(0.9, [[90, 0], [10, 0]])
    # three classes at accuracy 0.62: above the floor, and the slope clears (2·0.6 − 1)²
    conf = np.full((3, 3), 19) + np.diag([43] * 3)
    assert np.trace(conf) / conf.sum() == pytest.approx(0.62)
    assert correctable(conf) is None
    assert "slope" in correctable(conf, min_slope=0.5)
