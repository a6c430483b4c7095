# Reports: one per run, the grid report over (n, d), and the index page that links them.


rule report_run:
    input:
        metrics=f"results/metrics/{CELL}/{{score}}.zarr",
        trajectories=f"results/trajectories/{CELL}/{{score}}.zarr",
        train=TRAIN_STORE,
        train_log=get_train_log,
        notebook=f"{workflow.basedir}/workflow/notebooks/run.ipynb",
        code=code("report_run", "run"),
    output:
        notebook=f"results/reports/runs/{CELL}/{{score}}.ipynb",
        html=report(
            f"results/reports/runs/{CELL}/{{score}}.html",
            caption="../report/run.rst",
            category="Runs",
            subcategory="{dataset}",
            labels={"d": "{d}", "n": "{n}", "seed": "{seed}", "score": "{score}"},
        ),
        thumbnail=f"results/reports/runs/{CELL}/{{score}}.png",
    log:
        f"results/logs/report/{CELL}/{{score}}.log",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../../scripts/report_run.py"


rule report_summary:
    input:
        summary="results/summary.zarr",
        notebook=f"{workflow.basedir}/workflow/notebooks/summary.ipynb",
        code=code("report", "summary"),
    output:
        notebook="results/reports/summary.ipynb",
        html=report(
            "results/reports/summary.html",
            caption="../report/summary.rst",
            category="Grid",
            labels={"report": "curse of dimensionality"},
        ),
    log:
        "results/logs/report/summary.log",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../../scripts/report.py"


rule reproduction:
    input:
        summary="results/summary.zarr",
        reference=REFERENCE,
        code=code("reproduction"),
    output:
        "results/reproduction/comparison.csv",
    log:
        "results/logs/reproduction.log",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        laws=get_laws(),
    script:
        "../../scripts/reproduction.py"


rule report_reproduction:
    input:
        comparison="results/reproduction/comparison.csv",
        summary="results/summary.zarr",
        reference=REFERENCE,
        notebook=f"{workflow.basedir}/workflow/notebooks/reproduction.ipynb",
        code=code("report_reproduction", "reproduction"),
    output:
        notebook="results/reports/reproduction.ipynb",
        html=report(
            "results/reports/reproduction.html",
            caption="../report/reproduction.rst",
            category="Grid",
            labels={"report": "reproduction of the paper"},
        ),
    log:
        "results/logs/report/reproduction.log",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../../scripts/report_reproduction.py"


rule index:
    input:
        summary="results/summary.zarr",
        grid="results/reports/summary.html",
        reproduction="results/reports/reproduction.html",
        runs=run_reports(),
        thumbnails=run_reports("png"),
        code=code("index"),
    output:
        report("results/index.html", caption="../report/index.rst", category="Index"),
    log:
        "results/logs/report/index.log",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    script:
        "../../scripts/index.py"
