"""Rule `index`: results/index.html, the page that links every report and lists every run."""

from pathlib import Path

from diffregimes import reports, store
from diffregimes.joblog import start_log

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = start_log(sm.log[0], "index")
summary = store.open_store(sm.input.summary, "summary store")
out = Path(sm.output[0])
for path in sm.input.runs:  # every run report the table links to must exist
    if not Path(path).exists():
        raise FileNotFoundError(f"run report {path} is missing: rerun the workflow")
links = {
    "Reproduction of the paper: its numbers beside ours": sm.input.reproduction,
    "Grid report: the curse of dimensionality": sm.input.grid,
}
reports.index_html(summary, links, out)
log.info("wrote %s with %d runs", out, summary.sizes["run"])
