"""Rule `reproduction`: the paper's numbers beside the ones this grid measured.

Each entry of the reference file (workflow/reference/paper.yaml) names a number of the paper,
the runs that measure it (`select`: dataset kind, law keys, d, n, score) and how it is read
off their metrics (`measure`, one of MEASURES). The comparison has one row per entry, in the
file's order: `figure, quantity, setting, paper, measured, se, deviation_se, agrees` and then
`criterion, paper_se, runs, source, note`. Nothing vanishes: a number whose runs are not in
this grid (a bring-your-own set that is absent, a d beyond this config) is a row that says so.

Agreement, said per row in `criterion`:
- a sampled number: |measured − paper| ≤ 3 SE, SE = √(se² + paper_se²), with paper_se the
  paper's own uncertainty where it is known (PAPER.md) and its rounding otherwise;
- a closed form the code computes: |measured − paper| ≤ tolerance (the paper's rounding);
- φ against its closed form over every clone time: the largest deviation in SE units within
  the 3 SE level Bonferroni-corrected for the number of clone times (the paper's "within 0.015"
  bound is a statement about 10⁴ pairs, not a test);
- a scaling exponent of the follow-up (τ_mem ∝ n W⁻¹, τ_gen ∝ n⁰ W⁻¹): one weighted fit over
  all the selected runs (GRID_MEASURES), against the exact exponent within 3 SE.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
import yaml
from scipy import stats

from . import memorisation, process, theory

COLUMNS = [
    "figure",
    "quantity",
    "setting",
    "paper",
    "measured",
    "se",
    "deviation_se",
    "agrees",
    "criterion",
    "paper_se",
    "runs",
    "source",
    "note",
]
Z = 3.0  # agreement: within 3 SE
LAW_KEYS = ("kind", "mu", "sigma", "direction")  # select keys read from a dataset's config entry
RUN_KEYS = ("d", "n", "score", "dataset")  # select keys read from the run


def load_reference(path: str | Path) -> list[dict]:
    """The reference entries, checked: each needs figure, quantity, setting, paper, source and
    a known measure; a bad entry is an error naming its position and key."""
    with open(path) as f:
        entries = yaml.safe_load(f) or []
    for i, entry in enumerate(entries):
        where = f"{path}: entry {i + 1} ({entry.get('figure')}, {entry.get('quantity')})"
        for key in ("figure", "quantity", "setting", "paper", "source", "measure"):
            if key not in entry:
                raise ValueError(f"{where}: missing key '{key}'")
        if entry["measure"] not in MEASURES:
            raise ValueError(
                f"{where}: unknown measure '{entry['measure']}' (known: {', '.join(MEASURES)})"
            )
        unknown = set(entry.get("select", {})) - set(LAW_KEYS) - set(RUN_KEYS)
        if unknown:
            raise ValueError(f"{where}: unknown select keys {sorted(unknown)}")
    return entries


def select_runs(summary: xr.Dataset, laws: dict[str, dict], select: dict) -> xr.Dataset:
    """The runs of `summary` whose dataset law (`laws`: dataset name → its config entry) and
    run keys match every key of `select` (numbers compared to 1e-9; a list matches any of its
    values)."""

    def same(a, b):
        if isinstance(b, list):
            return any(same(a, v) for v in b)
        if isinstance(b, int | float) and not isinstance(b, bool):
            try:
                return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(b)))
            except (TypeError, ValueError):
                return False
        return str(a) == str(b)

    keep = []
    for i in range(summary.sizes["run"]):
        run = summary.isel(run=i)
        law = laws.get(str(run["dataset"].item()), {})
        ok = all(
            same(law.get(k), v) if k in LAW_KEYS else same(run[k].item(), v)
            for k, v in select.items()
        )
        if ok:
            keep.append(i)
    return summary.isel(run=keep)


# --- measures: (run: one run of the summary, entry) → (measured, se[, verdict]) --------------


def _scalar(run, name):
    return float(run[name]) if name in run else float("nan")


def _at(run, var, coord, t):
    """`var` at the coordinate value nearest `t`, which must be within 1e-3 of it."""
    c = run[coord].values
    finite = np.isfinite(run[var].values)
    if not finite.any():
        return float("nan"), float("nan")
    i = int(np.nanargmin(np.where(finite, np.abs(c - t), np.inf)))
    if abs(c[i] - t) > 1e-3 * max(1.0, abs(t)):
        raise LookupError(f"no {coord} at {t:g} in this run (nearest {c[i]:.4g})")
    se = run[f"{var}_se"].values[i] if f"{var}_se" in run else float("nan")
    return float(run[var].values[i]), float(se)


def t_S_ratio(run, entry):
    """t_S measured over the paper's t_S = ½ log Λ of the law (Λ = σ² + |m|²)."""
    ref = 0.5 * math.log(_scalar(run, "Lambda_population"))
    return _scalar(run, "t_S_measured") / ref, _scalar(run, "t_S_measured_se") / ref


def phi_at(run, entry):
    return _at(run, "phi_class", "clone_time", float(entry["at"]))


def phi_at_crossing(run, entry):
    """The GMM's φ where c_t²/Γ_t = 1 (SCIENCE.md §3), from the closed form."""
    return float(theory.phi_gmm(1.0)), 0.0


def phi_chi2(run, entry):
    """max |φ − φ_theory| over the clone times; agreement by the largest |φ − φ_theory|/SE
    against the 3 SE level Bonferroni-corrected for k clone times (|z| ≤ z at 0.0027/k): valid
    however the clone times are correlated (they share their parents, and copy 0)."""
    phi, th, se = (run[v].values for v in ("phi_class", "phi_theory", "phi_class_se"))
    ok = np.isfinite(phi) & np.isfinite(th) & (se > 0)
    if not ok.any():
        return float("nan"), float("nan")
    dev = np.abs(phi - th)[ok]
    i = int(np.argmax(dev))
    z = np.abs((phi - th) / se)[ok]
    k = int(ok.sum())
    bound = float(stats.norm.isf(stats.norm.sf(Z) / k))
    verdict = (
        float(z.max()) <= bound,
        f"largest |φ − φ_theory| = {z.max():.2f} SE over {k} clone times, agrees if ≤ "
        f"{bound:.2f} (3 SE Bonferroni-corrected for {k} correlated times); the paper's 0.015 "
        "bound is for 10⁴ pairs",
        float(z.max()),
    )
    return float(dev[i]), float(se[ok][i]), verdict


def alpha(run, entry):
    return _scalar(run, "alpha"), 0.0


def t_C_theory(run, entry):
    return _scalar(run, "t_C_theory"), 0.0


def f_over_alpha(run, entry):
    a = _scalar(run, "alpha")
    f, se = _at(run, "f_excess", "time", float(entry["at"]))
    return f / a, se / a


def f_theory_over_alpha(run, entry):
    return _at(run, "f_theory", "time", float(entry["at"]))[0] / _scalar(run, "alpha"), 0.0


def t_C_mean(run, entry):
    return _scalar(run, "t_C_measured"), _scalar(run, "t_C_measured_se")


def f_crossing(run, entry):
    """Largest t where f^e/α falls through the level `at` (linear interpolation); its SE from
    the Monte Carlo SE of f^e at the crossing over the local slope."""
    a = _scalar(run, "alpha")
    t, f = run["time"].values, run["f_excess"].values / a
    se = run["f_excess_se"].values / a
    ok = np.isfinite(t) & np.isfinite(f)  # the summary pads other runs' times with NaN
    t, f, se = t[ok], f[ok], se[ok]
    level = float(entry["at"])
    t_x = theory.crossing_time(t, f, level)
    if not np.isfinite(t_x):
        return float("nan"), float("nan")
    order = np.argsort(t)
    i = int(np.searchsorted(t[order], t_x)) - 1  # the points beside the crossing: i, i + 1
    lo, hi = order[max(i, 0)], order[min(i + 1, len(t) - 1)]
    slope = (f[hi] - f[lo]) / (t[hi] - t[lo])
    return t_x, float(max(se[lo], se[hi]) / slope)


def Lambda(run, entry):  # noqa: N802 (the paper's symbol)
    return _scalar(run, "Lambda"), 0.0


def t_S_theory(run, entry):
    return _scalar(run, "t_S_theory"), 0.0


def t_S_ddpm(run, entry):
    return _scalar(run, "t_S_ddpm"), 0.0


def t_S_measured(run, entry):
    return _scalar(run, "t_S_measured"), _scalar(run, "t_S_measured_se")


def k_over_k_S(run, entry):  # noqa: N802
    """Measured t_S as a step of the linear 1000-step DDPM schedule over k_S, SE by the local
    slope dk/dt of the schedule."""
    tk = process.step_to_time(process.alphas_bar("linear", 1000))
    t, se, k_s = (_scalar(run, v) for v in ("t_S_measured", "t_S_measured_se", "k_S_ddpm"))
    k = np.interp([t - 0.01, t, t + 0.01], tk, np.arange(tk.size), left=np.nan, right=np.nan)
    return float(k[1] / k_s), float((k[2] - k[0]) / 0.02 * se / k_s)


def tau_mem_over_n(run, entry):
    """τ_mem/n; its SE from τ_mem's interval (half its width over 2 z₉₇.₅)."""
    n = float(run["n"])
    lo, hi = _scalar(run, "tau_mem_ci_low"), _scalar(run, "tau_mem_ci_high")
    return _scalar(run, "tau_mem") / n, (hi - lo) / (2 * stats.norm.ppf(0.975)) / n


# --- grid measures: (all selected runs, entry) → (measured, se): a fit across runs -----------


def _exponent(runs, axis, tau):
    """The fitted exponent of τ ∝ axis^b over the selected learned runs (memorisation.fit_runs)."""
    learned = memorisation.learned_runs(runs)
    if learned is None:
        return float("nan"), float("nan")
    fit = memorisation.fit_runs(learned, axis, tau)
    if fit["points"] < 3:
        raise LookupError(
            f"{fit['points']} of {learned.sizes['run']} learned runs have a finite {tau} "
            "(at least 3 are needed for a fit): train longer (models.*.steps_per_point)"
        )
    return fit["exponent"], fit["se"]


def tau_mem_exponent_n(runs, entry):
    """b of τ_mem ∝ n^b (the follow-up: 1)."""
    return _exponent(runs, "n", "tau_mem")


def tau_mem_dsm_exponent_n(runs, entry):
    """b of τ_mem (DSM loss gap) ∝ n^b (the follow-up: 1)."""
    return _exponent(runs, "n", "tau_mem_dsm")


def tau_gen_exponent_n(runs, entry):
    """b of τ_gen ∝ n^b (the follow-up: 0)."""
    return _exponent(runs, "n", "tau_gen")


def tau_gen_end_exponent_n(runs, entry):
    """b of τ ∝ n^b for the end of the quality measure's descent (all but
    `training_axis.plateau_tolerance` of the drop to its best value, which falls ∝ 1/n):
    beside τ_gen, the middle of the descent."""
    return _exponent(runs, "n", "tau_gen_end")


def tau_mem_exponent_width(runs, entry):
    """b of τ_mem ∝ W^b at fixed n (the follow-up: −1)."""
    return _exponent(runs, "model_width", "tau_mem")


def tau_gen_exponent_width(runs, entry):
    """b of τ_gen ∝ W^b (the follow-up: −1)."""
    return _exponent(runs, "model_width", "tau_gen")


GRID_MEASURES = {
    f.__name__: f
    for f in (
        tau_mem_exponent_n,
        tau_mem_dsm_exponent_n,
        tau_gen_exponent_n,
        tau_gen_end_exponent_n,
        tau_mem_exponent_width,
        tau_gen_exponent_width,
    )
}

MEASURES = {
    f.__name__: f
    for f in (
        t_S_ratio,
        phi_at,
        phi_at_crossing,
        phi_chi2,
        alpha,
        t_C_theory,
        f_over_alpha,
        f_theory_over_alpha,
        t_C_mean,
        f_crossing,
        Lambda,
        t_S_theory,
        t_S_ddpm,
        t_S_measured,
        k_over_k_S,
        tau_mem_over_n,
    )
} | GRID_MEASURES
NEEDS_NO_RUN = ("phi_at_crossing",)


def rounding_se(value) -> float:
    """The SD of the rounding error of a printed number: half a unit of its last digit over √3
    (uniform). Its digits are read from the text as printed: give numbers with trailing zeros
    as strings in the reference file ("1.000": YAML would read 1.000 as 1.0)."""
    text = value if isinstance(value, str) else repr(float(value))
    decimals = len(text.split(".")[1]) if "." in text and "e" not in text.lower() else 0
    return 0.5 * 10.0**-decimals / math.sqrt(3)


def _combine(values):
    """Runs measuring one number (several seeds): the inverse-variance mean and its SE, or the
    plain mean for numbers without sampling error."""
    v = np.array([x[0] for x in values], dtype=float)
    s = np.array([x[1] for x in values], dtype=float)
    if len(v) == 1:
        return v[0], s[0]
    if np.all(np.isfinite(s)) and np.all(s > 0):
        w = 1 / s**2
        return float((w * v).sum() / w.sum()), float(1 / math.sqrt(w.sum()))
    return float(np.mean(v)), float(np.std(v, ddof=1) / math.sqrt(len(v)))


def _describe_select(select: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in select.items()) or "any run"


def compare(summary: xr.Dataset | None, laws: dict[str, dict], entries: list[dict]) -> pd.DataFrame:
    """One row per reference entry (see the module docstring)."""
    rows = []
    for entry in entries:
        row = {c: None for c in COLUMNS}
        row.update({k: entry[k] for k in ("figure", "quantity", "setting", "source")})
        printed = entry["paper"]  # a string where trailing zeros are digits ("1.000")
        paper = None if printed is None else float(printed)
        row["paper"] = float("nan") if paper is None else paper
        select = entry.get("select", {})
        measure = MEASURES[entry["measure"]]
        values, verdict, note = [], None, ""
        if entry["measure"] in NEEDS_NO_RUN:
            values, runs = [measure(None, entry)], "closed form"
        else:
            runs_ds = select_runs(summary, laws, select) if summary is not None else None
            n_runs = 0 if runs_ds is None else runs_ds.sizes["run"]
            runs = f"{n_runs} run(s): {_describe_select(select)}"
            if entry["measure"] in GRID_MEASURES:  # one fit over all the runs
                try:
                    values = [measure(runs_ds, entry)] if n_runs else []
                except LookupError as err:
                    note = str(err)
            for i in range(0 if entry["measure"] in GRID_MEASURES else n_runs):
                try:
                    out = measure(runs_ds.isel(run=i), entry)
                except LookupError as err:
                    note = str(err)
                    continue
                values.append(out[:2])
                if len(out) == 3:
                    verdict = out[2]
        row["runs"] = runs
        if not values:
            row.update(measured=np.nan, se=np.nan, deviation_se=np.nan, agrees="absent")
            row["note"] = note or (
                f"no run of this grid matches {_describe_select(select)}: add those cells "
                "(config/reproduce.yaml has them; bring-your-own sets need their path)"
            )
            row["criterion"] = ""
            rows.append(row)
            continue
        measured, se = _combine(values)
        row["measured"], row["se"] = measured, se
        paper_se = entry.get("paper_se")
        if paper_se is None and paper is not None and "tolerance" not in entry:
            paper_se = rounding_se(printed)
        row["paper_se"] = float("nan") if paper_se is None else float(paper_se)
        if paper is None:
            row.update(deviation_se=np.nan, agrees="extension", criterion="no paper number")
        elif not np.isfinite(measured):
            row.update(deviation_se=np.nan, agrees="no", criterion="")
            row["note"] = "the measurement is undefined in these runs (NaN): see their metrics"
        elif "tolerance" in entry:
            tol = float(entry["tolerance"])
            row["deviation_se"] = (measured - paper) / se if se > 0 else np.nan
            row["agrees"] = "yes" if abs(measured - paper) <= tol else "no"
            row["criterion"] = f"|measured − paper| ≤ {tol:g} (closed form; the paper's rounding)"
        else:
            total = math.hypot(se, row["paper_se"]) if np.isfinite(se) else np.nan
            row["deviation_se"] = (measured - paper) / total if total > 0 else np.nan
            if verdict is not None:  # deviation_se: the largest |φ − φ_theory|/SE
                row["agrees"] = "yes" if verdict[0] else "no"
                row["criterion"], row["deviation_se"] = verdict[1], verdict[2]
            else:
                row["agrees"] = "yes" if abs(row["deviation_se"]) <= Z else "no"
                row["criterion"] = (
                    f"|deviation| ≤ {Z:g} SE, SE = √(se² + paper_se²) "
                    f"(paper_se: {entry.get('paper_se_source', 'rounding')})"
                )
        row["note"] = row["note"] or note
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)
