"""Rule `summary`: stack every run's metrics into results/summary.zarr."""

from diffregimes import store, summary
from diffregimes.joblog import start_log

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = start_log(sm.log[0], "summary")
runs = [store.open_store(path, "metrics store") for path in sm.input.stores]
log.info("stacking %d runs", len(runs))
store.write(summary.stack_summary(runs), sm.output[0])
