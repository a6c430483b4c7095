# Theory of each training set, metrics of each run, and the summary over the grid.


rule theory:
    input:
        train=TRAIN_STORE,
        code=code("theory"),
    output:
        directory(f"results/theory/{CELL}/theory.zarr"),
    log:
        f"results/logs/theory/{CELL}.log",
    benchmark:
        f"results/benchmarks/theory/{CELL}.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        gpu=gpu_of("theory"),
        mem_mb=mem_mb_of("theory"),
        runtime=runtime_of("theory"),
        budget_mb=BUDGET_MB,
    params:
        time=get_time,
        entropy_samples=get_entropy_samples,
        entropy_collapse_fraction=config["metrics"]["entropy_collapse_fraction"],
        entropy_zero_se=config["metrics"]["entropy_zero_se"],
        bootstrap=config["metrics"]["bootstrap"],
    script:
        "../../scripts/theory.py"


# The theory of a smoothed baseline: the cell's training set blurred by N(0, σ_s² I) (SCIENCE.md
# §7), its own f^e and t_C by the same Monte Carlo.
rule theory_baseline:
    input:
        train=TRAIN_STORE,
        code=code("theory"),
    output:
        directory(f"results/theory/{CELL}/baselines/{{baseline}}.zarr"),
    log:
        f"results/logs/theory/{CELL}/{{baseline}}.log",
    benchmark:
        f"results/benchmarks/theory/{CELL}/{{baseline}}.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        gpu=gpu_of("theory"),
        mem_mb=mem_mb_of("theory"),
        runtime=runtime_of("theory"),
        budget_mb=BUDGET_MB,
    params:
        time=get_time,
        entropy_samples=get_entropy_samples,
        entropy_collapse_fraction=config["metrics"]["entropy_collapse_fraction"],
        entropy_zero_se=config["metrics"]["entropy_zero_se"],
        bootstrap=config["metrics"]["bootstrap"],
        blur=get_blur,
    script:
        "../../scripts/theory.py"


rule metrics:
    input:
        trajectories=f"results/trajectories/{CELL}/{{score}}.zarr",
        train=TRAIN_STORE,
        theory=get_theory,
        probes=f"results/probes/{CELL}/{{score}}.zarr",
        training=get_training_axis,
        judge=get_judge,
        code=code("metrics"),
    output:
        directory(f"results/metrics/{CELL}/{{score}}.zarr"),
    log:
        f"results/logs/metrics/{CELL}/{{score}}.log",
    benchmark:
        f"results/benchmarks/metrics/{CELL}/{{score}}.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=mem_mb_of("metrics"),
        runtime=runtime_of("metrics"),
        budget_mb=BUDGET_MB,
    params:
        metrics=get_metrics_settings(),
    script:
        "../../scripts/metrics.py"


rule summary:
    input:
        stores=metrics_stores(),
        code=code("summary"),
    output:
        directory("results/summary.zarr"),
    log:
        "results/logs/summary.log",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    script:
        "../../scripts/summary.py"
