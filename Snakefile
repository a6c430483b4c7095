# Dynamical regimes of diffusion models over a grid of (n, d).
# Stages: data -> theory -> sample -> metrics -> summary -> reports (workflow/rules/*.smk).
from snakemake.utils import min_version

min_version("9.0")


# A --configfile on the command line replaces the default config instead of merging into it
# (a paper-scale grid must not inherit the default datasets).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


# common.smk checks the config (schema and beyond) before any job is planned.
include: "workflow/rules/common.smk"


wildcard_constraints:
    dataset="[A-Za-z][A-Za-z0-9_-]*",
    d=r"\d+",
    n=r"\d+",
    seed=r"\d+",
    score="[A-Za-z][A-Za-z0-9_]*",
    model="[A-Za-z][A-Za-z0-9_]*",
    baseline="[A-Za-z][A-Za-z0-9_]*",


include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/metrics.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        "results/index.html",
