"""Rule `report_summary`: execute the grid notebook with papermill and render it to HTML."""

from pathlib import Path

from diffregimes.joblog import start_log
from diffregimes.reports import render_notebook

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = start_log(sm.log[0], "report")
log.info("executing %s", sm.input.notebook)
render_notebook(
    sm.input.notebook,
    sm.output.notebook,
    sm.output.html,
    {"summary_path": str(Path(sm.input.summary).resolve())},
    log_output=True,
)
log.info("wrote %s", sm.output.html)
