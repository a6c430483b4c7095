# Reports: the grid summary notebook rendered to HTML, and the index page.
import sys

PY = sys.executable


rule report_summary:
    input:
        summary="results/summary.zarr",
        notebook="workflow/notebooks/summary.ipynb",
        code=modules("plots"),
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
    shell:
        "{PY} -m papermill {input.notebook} {output.notebook} -k python3"
        " -p summary_path $(realpath {input.summary}) --cwd $(dirname {output.notebook})"
        " > {log} 2>&1"
        " && {PY} -m nbconvert --to html --no-input {output.notebook}"
        " --output $(basename {output.html}) >> {log} 2>&1"


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
