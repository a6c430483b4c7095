"""Rule `report_run`: execute the per-run notebook with papermill and render it to HTML."""

from pathlib import Path

from diffregimes.joblog import start_log
from diffregimes.reports import render_notebook

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = start_log(sm.log[0], "report_run")
inp = sm.input
render_notebook(
    inp.notebook,
    sm.output.notebook,
    sm.output.html,
    {
        "metrics_path": str(Path(inp.metrics).resolve()),
        "trajectories_path": str(Path(inp.trajectories).resolve()),
        "train_path": str(Path(inp.train).resolve()),
        "train_log_path": str(Path(inp.train_log[0]).resolve()) if inp.get("train_log") else "",
        "thumbnail_path": str(Path(sm.output.thumbnail).resolve()),
    },
    log_output=True,
)
log.info("wrote %s", sm.output.html)
