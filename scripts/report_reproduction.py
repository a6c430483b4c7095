"""Rule `report_reproduction`: execute the reproduction notebook and render it to HTML."""

from pathlib import Path

from diffregimes.joblog import start_log
from diffregimes.reports import render_notebook

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = start_log(sm.log[0], "report")
render_notebook(
    sm.input.notebook,
    sm.output.notebook,
    sm.output.html,
    {
        "comparison_path": str(Path(sm.input.comparison).resolve()),
        "summary_path": str(Path(sm.input.summary).resolve()),
        "reference_path": str(Path(sm.input.reference).resolve()),
    },
    log_output=True,
)
log.info("wrote %s", sm.output.html)
