"""`results/index.html`: one self-contained page that links every report and lists every run.

The page has no external assets (it works opened as a file and served by `python -m
http.server`); its run table sorts on a header click and filters as you type.
"""

from __future__ import annotations

import html
import os
import re
from pathlib import Path

import numpy as np
import xarray as xr

from .plots import run_table

# An empty inline icon: browsers then do not request /favicon.ico (a 404 in every server log).
NO_FAVICON = '<link rel="icon" href="data:,">'
RUN_REPORT = "reports/runs/{dataset}/d{d}/n{n}/s{seed}/{score}"  # relative to results/

# (variable, header, its SE or (low, high) interval variables)
COLUMNS = [
    ("dataset", "dataset", None),
    ("d", "d", None),
    ("n", "n", None),
    ("seed", "seed", None),
    ("score", "score", None),
    ("Lambda", "Λ", None),
    ("t_S_theory", "t_S ½ log Λ", None),
    ("t_S_gmm", "t_S exact GMM", None),
    ("t_S_measured", "t_S measured", "t_S_measured_se"),
    ("t_S_probe", "t_S probes", "t_S_probe_se"),
    ("t_C_theory", "t_C theory", None),
    ("t_C_measured", "t_C measured", "t_C_measured_se"),
    ("t_C_probe", "t_C probes", "t_C_probe_se"),
    ("t_C_entropy", "t_C from f^e", "t_C_entropy_se"),
    ("f_mem", "f_mem [95% CI]", ("f_mem_ci_low", "f_mem_ci_high")),
    ("tau_mem", "τ_mem [95% CI]", ("tau_mem_ci_low", "tau_mem_ci_high")),
    ("tau_mem_dsm", "τ_mem DSM gap [95% CI]", ("tau_mem_dsm_ci_low", "tau_mem_dsm_ci_high")),
    ("tau_gen", "τ_gen [bracket]", ("tau_gen_bracket_low", "tau_gen_bracket_high")),
    ("tau_gen_end", "τ_gen end [bracket]", ("tau_gen_end_bracket_low", "tau_gen_end_bracket_high")),
]

_SCRIPT = """
const table = document.getElementById('runs');
const rows = () => Array.from(table.tBodies[0].rows);
document.getElementById('filter').addEventListener('input', e => {
  const q = e.target.value.toLowerCase();
  rows().forEach(r => { r.hidden = !r.textContent.toLowerCase().includes(q); });
});
table.tHead.querySelectorAll('th').forEach((th, i) => th.addEventListener('click', () => {
  const dir = th.dataset.dir === 'asc' ? 'desc' : 'asc';
  th.dataset.dir = dir;
  const key = r => { const v = r.cells[i].dataset.v; const f = parseFloat(v);
                     return isNaN(f) ? v : f; };
  const sorted = rows().sort((a, b) => (key(a) > key(b) ? 1 : key(a) < key(b) ? -1 : 0)
                                       * (dir === 'asc' ? 1 : -1));
  sorted.forEach(r => table.tBodies[0].appendChild(r));
}));
"""

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 80em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { padding: 0.25em 0.6em; border-bottom: 1px solid #ddd; text-align: right; }
th { cursor: pointer; background: #f4f4f4; position: sticky; top: 0; }
td:nth-child(-n+6), th:nth-child(-n+6) { text-align: left; }
img { display: block; border: 1px solid #eee; }
input { margin: 0.5em 0; padding: 0.3em; width: 20em; }
"""


def _num(value) -> str:
    return "–" if not np.isfinite(value) else f"{value:.3g}"


def _cell(value, error=None) -> str:
    """A table cell: the value to sort on, shown with its SE (± x) or interval ([lo, hi])."""
    if isinstance(value, float | np.floating):
        text = _num(value)
        if isinstance(error, tuple):
            lo, hi = error
            if np.isfinite(lo) or np.isfinite(hi):
                if not np.isfinite(value) and np.isfinite(lo) and not np.isfinite(hi):
                    text = f"&gt; {_num(lo)}"  # τ_mem beyond the last step: a lower bound
                else:
                    text += f" [{_num(lo)}, {_num(hi) if np.isfinite(hi) else '∞'}]"
        elif error is not None and np.isfinite(value) and np.isfinite(error):
            text += f" ± {error:.2g}"
        return f'<td data-v="{value}">{text}</td>'
    return f'<td data-v="{html.escape(str(value))}">{html.escape(str(value))}</td>'


def _error(row, err):
    if err is None:
        return None
    if isinstance(err, tuple):
        return tuple(float(row.get(k, np.nan)) for k in err)
    return float(row.get(err, np.nan))


def run_report_stem(row) -> str:
    """Path (without extension) of a run's report, relative to the results folder."""
    return RUN_REPORT.format(**{k: row[k] for k in ("dataset", "d", "n", "seed", "score")})


def index_html(summary: xr.Dataset, reports: dict[str, str], out: str | os.PathLike) -> str:
    """Write the index page to `out`: links to the grid-level `reports` (title → path) and
    one table row per run with its thumbnail and a link to its report."""
    out = Path(out)
    table = run_table(summary)
    optional = [key for key, _, err in COLUMNS[-3:] for key in (key, *err)]
    probed = ("t_S_probe", "t_S_probe_se", "t_C_probe", "t_C_probe_se")
    for key in (*optional, *probed, "t_S_gmm", "t_C_entropy_se"):
        if key not in table:
            table[key] = np.nan
    links = "\n".join(
        f'<li><a href="{html.escape(os.path.relpath(path, out.parent))}">{html.escape(title)}'
        "</a></li>"
        for title, path in reports.items()
    )
    head = "<th>report</th>" + "".join(f"<th>{html.escape(lab)}</th>" for _, lab, _ in COLUMNS)
    rows = []
    for _, row in table.iterrows():
        stem = html.escape(run_report_stem(row))
        link = (
            f'<td data-v="{stem}"><a href="{stem}.html"><img src="{stem}.png" '
            f'alt="φ(t) of this run" width="160"></a></td>'
        )
        cells = "".join(_cell(row[key], _error(row, err)) for key, _, err in COLUMNS)
        rows.append("<tr>" + link + cells + "</tr>")
    body = "\n".join(rows)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">{NO_FAVICON}
<title>Dynamical regimes of diffusion models: results</title>
<style>{_STYLE}</style></head>
<body>
<h1>Dynamical regimes of diffusion models</h1>
<p>{len(table)} runs over {table.dataset.nunique()} dataset(s). Times are OU times t.
Every measured time carries its standard error (± SE) or interval.
t_S: speciation (a monotone fit of φ(t) crossing 0.7752, corrected for the class judge's errors
on images; references: the paper's ½ log Λ and, for the GMM, the exact crossing
½ log(|m|² + 1 − σ²)); t_C: collapse (mean t̂_C, theory from the excess entropy, and the zero
of the Monte Carlo f^e); f_mem: fraction of generated samples x̂₀ with d₁/d₂ &lt; 1/3 (Wilson
interval); τ_mem: training step at which a learned score starts to memorise (&gt; last step when
it never does). Click a thumbnail for the run's report; click a
header to sort.</p>
<h2>Reports</h2>
<ul>
{links}
</ul>
<h2>Runs</h2>
<input id="filter" type="search" placeholder="filter rows (e.g. empirical, d=128 → 128)">
<table id="runs"><thead><tr>{head}</tr></thead>
<tbody>
{body}
</tbody></table>
<script>{_SCRIPT}</script>
</body></html>
"""
    out.write_text(page, encoding="utf-8")
    return page


def render_notebook(
    template: str | os.PathLike,
    executed: str | os.PathLike,
    html_out: str | os.PathLike,
    parameters: dict,
    log_output: bool = False,
) -> None:
    """Execute a papermill template (kernel `python3`) and convert it to HTML without code.

    The kernel runs in the executed notebook's folder; figures are embedded in the HTML."""
    import nbformat
    import papermill
    from nbconvert import HTMLExporter

    executed = Path(executed)
    executed.parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(
        str(template),
        str(executed),
        parameters=parameters,
        kernel_name="python3",
        cwd=str(executed.parent),
        log_output=log_output,
        progress_bar=False,
        # The kernel listens on localhost only; its warning about unencrypted TCP, printed for
        # every report of a run, said nothing a user can act on. Errors still show.
        extra_arguments=["--IPKernelApp.log_level=ERROR"],
    )
    exporter = HTMLExporter(exclude_input=True)
    body, _ = exporter.from_notebook_node(nbformat.read(executed, as_version=4))
    # Reports must open offline and from a file: drop nbconvert's CDN scripts (require.js,
    # MathJax); the reports use no widgets and write their math in Unicode.
    body = re.sub(r'<script src="https?://[^"]*">\s*</script>', "", body)
    body = body.replace("<head>", f"<head>\n{NO_FAVICON}", 1)
    Path(html_out).write_text(body, encoding="utf-8")
