"""Undoing the class judge's errors in the speciation curve φ(t) (SCIENCE.md §3).

The clone end points of image data are labelled by a judge (`judge.py`) with held-out accuracy
a < 1, which pulls the measured agreement φ_obs toward chance: for two balanced classes with
symmetric errors φ_obs = 2a(1 − a) + (2a − 1)² φ, and at a ≈ 0.85 the 0.7752 crossing is gone.
This module inverts that map for K classes from the judge's held-out confusion matrix and
rescales the crossing threshold for unbalanced or K-class data.

Model (K classes, c, j ∈ 0..K−1). The judge labels each clone independently given its true
class, with M[c, j] = P(judge says j | true class c), the row-normalised confusion matrix
(rows true, columns predicted). A clone pair has the same true class with probability φ, that
class being c with probability π_c; a pair of different true classes (c1 ≠ c2) has probability
∝ π_c1 π_c2. Both clones of a pair of true classes (c1, c2) get the same label with
probability (M Mᵀ)[c1, c2] = Σ_j M[c1, j] M[c2, j], so

    φ_obs = B + (A − B) φ,
    A = Σ_c π_c (M Mᵀ)[c, c],
    B = Σ_{c1≠c2} π_c1 π_c2 (M Mᵀ)[c1, c2] / (1 − Σ_c π_c²).

For two balanced classes with symmetric accuracy a, A = a² + (1 − a)², B = 2a(1 − a) and
A − B = (2a − 1)², the formula of SCIENCE.md §3. π defaults to the confusion matrix's row sums,
normalised (the held-out class proportions).

Pure numpy, float64; no torch, no xarray.
"""

from __future__ import annotations

import numpy as np

from .theory import PHI_AT_SPECIATION

__all__ = ["corrected_phi", "correctable", "pair_agreement_map", "speciation_threshold"]


def _confusion(confusion) -> np.ndarray:
    """The confusion matrix as a float64 (K, K) array, or ValueError saying what is wrong."""
    if confusion is None:
        raise ValueError(
            "no confusion matrix (a judge file written before it was stored: rerun the judge)"
        )
    c = np.asarray(confusion, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1] or c.shape[0] < 2:
        raise ValueError(f"a confusion matrix is K×K with K ≥ 2, got shape {c.shape}")
    if not np.all(np.isfinite(c)) or np.any(c < 0):
        raise ValueError("a confusion matrix holds finite non-negative counts")
    empty = np.flatnonzero(c.sum(axis=1) == 0)
    if len(empty):
        raise ValueError(
            f"class indices {empty.tolist()} have no held-out images: their error rates are unknown"
        )
    return c


def _priors(c: np.ndarray, priors) -> np.ndarray:
    if priors is None:
        pi = c.sum(axis=1)
    else:
        pi = np.asarray(priors, dtype=np.float64).ravel()
        if pi.shape != (len(c),) or not np.all(np.isfinite(pi)) or np.any(pi < 0):
            raise ValueError(
                f"priors must be {len(c)} finite non-negative numbers, got {np.asarray(priors)}"
            )
    if pi.sum() <= 0:
        raise ValueError("the class priors sum to zero")
    pi = pi / pi.sum()
    if 1 - np.sum(pi**2) <= 1e-12:
        raise ValueError(
            "the priors put all weight on one class: there are no different-class pairs"
        )
    return pi


def pair_agreement_map(confusion, priors=None) -> tuple[float, float]:
    """(A, B) of the linear map φ_obs = B + (A − B) φ (SCIENCE.md §3, module docstring).

    confusion: held-out counts (K, K), rows the true class, columns the predicted one (as
    `train_judge` returns in info["confusion"]); M is it row-normalised. priors: class
    probabilities π (K,), normalised here; default the confusion row sums, normalised.

    A = Σ_c π_c (M Mᵀ)[c, c] is the probability that a same-class pair gets the same label,
    B = Σ_{c1≠c2} π_c1 π_c2 (M Mᵀ)[c1, c2] / (1 − Σ_c π_c²) that a different-class pair does.
    A perfect judge gives (1, 0); two balanced classes with symmetric accuracy a give
    A − B = (2a − 1)², B = 2a(1 − a).

    Note: the model weighs same-class pairs by π_c (the class the parent trajectory has
    already picked), so at exact chance φ = Σπ² the predicted φ_obs equals Σ_j (πM)_j² (two
    independent draws) only for balanced classes or when the judge's agreement (M Mᵀ)[c, c]
    is the same for every class.
    """
    c = _confusion(confusion)
    pi = _priors(c, priors)
    m = c / c.sum(axis=1, keepdims=True)
    same = m @ m.T  # same[c1, c2] = P(both labels equal | true classes c1, c2)
    a = float(pi @ np.diag(same))
    off = np.outer(pi, pi)
    np.fill_diagonal(off, 0.0)
    b = float(np.sum(off * same) / (1 - np.sum(pi**2)))
    return a, b


def corrected_phi(phi_obs, confusion, priors=None, se=None):
    """(φ, se_φ): the judge's errors undone, φ = (φ_obs − B)/(A − B), with (A, B) from
    `pair_agreement_map` (SCIENCE.md §3); se_φ = se/(A − B), or None without `se`.

    φ_obs and se are numbers or arrays (e.g. over clone times); the result has their shape.
    The result is NOT clipped to [0, 1]: near φ ≈ 1 (or chance) the noise of φ_obs puts some
    corrected values beyond the bounds, and clipping them would shift the mean of the curve
    there toward the inside and so bias the interpolated 0.7752 crossing and its bootstrap;
    a value outside [0, 1] is read as "within noise of the bound".

    se_φ carries the sampling error of φ_obs only; the confusion matrix's own uncertainty
    (a few hundred held-out images) is a systematic shared by all clone times and is not in
    it. Raises ValueError when A − B ≤ 0 (a judge no better than chance cannot be inverted);
    check `correctable` first.
    """
    a, b = pair_agreement_map(confusion, priors)
    slope = a - b
    if not slope > 0:
        raise ValueError(f"A − B = {slope:.3g} ≤ 0: the judge's labels carry no class information")
    phi = (np.asarray(phi_obs, dtype=np.float64) - b) / slope
    se_phi = None if se is None else np.asarray(se, dtype=np.float64) / slope
    return phi, se_phi


def speciation_threshold(sum_p2, phi_star: float = PHI_AT_SPECIATION):
    """The φ level that marks speciation for class proportions p (SCIENCE.md §3):

        φ* = Σp² + (1 − Σp²) (PHI − ½)/½,

    PHI = `theory.PHI_AT_SPECIATION` ≈ 0.7752, the two-balanced-class GMM value, for which
    Σp² = ½ gives φ* = PHI. sum_p2 = Σ_c p_c² ∈ (0, 1], a number or an array."""
    s = np.asarray(sum_p2, dtype=np.float64)
    if np.any(~(s > 0)) or np.any(s > 1):
        raise ValueError(f"Σp² lies in (0, 1], got {sum_p2}")
    return s + (1 - s) * (phi_star - 0.5) / 0.5


def correctable(confusion, min_accuracy: float = 0.6, priors=None, min_slope=None) -> str | None:
    """None when φ can be corrected with this confusion matrix, else a sentence saying why not.

    Not correctable: no confusion matrix (judge files written before it was stored), a
    malformed one or a class without held-out images, held-out accuracy (trace/total) ≤
    `min_accuracy`, or a slope A − B (`pair_agreement_map`) ≤ `min_slope`: the correction
    multiplies the noise of φ_obs by 1/(A − B). min_slope defaults to (2·min_accuracy − 1)²,
    the slope of two balanced classes at the accuracy floor (0.04 for 0.6); it catches
    judges that are accurate on paper but near-blind, e.g. one that gives the majority class
    to every image of unbalanced data (A = B = 1).
    """
    try:
        c = _confusion(confusion)
        accuracy = float(np.trace(c) / c.sum())
        if accuracy <= min_accuracy:
            return (
                f"the judge's held-out accuracy {accuracy:.4g} is at or below {min_accuracy:g}: "
                "its labels are too noisy to undo in φ"
            )
        a, b = pair_agreement_map(c, priors)
    except ValueError as err:
        return f"the judge cannot be corrected: {err}"
    floor = (2 * min_accuracy - 1) ** 2 if min_slope is None else min_slope
    slope = a - b if abs(a - b) > 1e-12 else 0.0  # no "-4.4e-16" in the sentence
    if not slope > floor:
        return (
            f"the judge's pair-agreement slope A − B = {slope:.3g} (A = {a:.4g}, B = {b:.4g}) "
            f"is at or below {floor:.3g}: correcting φ would multiply its noise by "
            f"{'∞' if slope <= 0 else f'{1 / slope:.3g}'}"
        )
    return None
