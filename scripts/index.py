"""Rule `index`: results/index.html, the page that links every report and lists every run."""

from diffregimes import reports, store
from diffregimes.joblog import start_log

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = start_log(sm.log[0], "index")
summary = store.open_store(sm.input.summary)
reports.index_html(
    summary, {"Grid summary: speciation and collapse": sm.input.reports[0]}, sm.output[0]
)
log.info("wrote %s with %d runs", sm.output[0], summary.sizes["run"])
