# Reports: the grid summary notebook rendered to HTML, and the index page.


rule report_summary:
    input:
        summary="results/summary.zarr",
        notebook=f"{workflow.basedir}/workflow/notebooks/summary.ipynb",
        code=modules("plots", "reports"),
    output:
        notebook="results/reports/summary.ipynb",
        html=report(
            "results/reports/summary.html",
            caption="../report/summary.rst",
            category="Grid",
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


rule index:
    input:
        summary="results/summary.zarr",
        reports=["results/reports/summary.html"],
        code=modules("reports"),
    output:
        "results/index.html",
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
