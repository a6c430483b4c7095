"""Rule `reproduction`: results/reproduction/comparison.csv, the paper's numbers beside ours."""

from pathlib import Path

from diffregimes import reproduction, store
from diffregimes.joblog import start_log

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = start_log(sm.log[0], "reproduction")
entries = reproduction.load_reference(sm.input.reference)
summary = store.open_store(sm.input.summary, "summary store")
table = reproduction.compare(summary, sm.params.laws, entries)
Path(sm.output[0]).parent.mkdir(parents=True, exist_ok=True)
table.to_csv(sm.output[0], index=False)
counts = table["agrees"].value_counts().to_dict()
log.info("%d reference numbers: %s", len(table), counts)
for _, row in table[table["agrees"] == "no"].iterrows():
    log.warning(
        "%s %s (%s): paper %s, measured %.4g ± %.2g",
        *row[["figure", "quantity", "setting"]],
        row["paper"],
        row["measured"],
        row["se"],
    )
