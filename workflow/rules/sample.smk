# Backward trajectories and clones of one score on one data cell.


rule sample:
    input:
        train=TRAIN_STORE,
        model=get_score_inputs,
        judge=get_judge,
        code=code("sample"),
    output:
        directory(f"results/trajectories/{CELL}/{{score}}.zarr"),
    log:
        f"results/logs/sample/{CELL}/{{score}}.log",
    benchmark:
        f"results/benchmarks/sample/{CELL}/{{score}}.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        gpu=1,
        mem_mb=mem_mb_of("sample"),
        runtime=runtime_of("sample", 60),
        budget_mb=BUDGET_MB,
    params:
        time=get_time,
        sampler=get_sampler,
        cloning=get_cloning,
        baseline=get_baseline,
    script:
        "../../scripts/sample.py"


# Forward–backward probes of one run: data points noised to each probe time and run back.
rule probe:
    input:
        train=TRAIN_STORE,
        test=f"results/data/{CELL}/test.zarr",
        model=get_score_inputs,
        judge=get_judge,
        code=code("probe"),
    output:
        directory(f"results/probes/{CELL}/{{score}}.zarr"),
    log:
        f"results/logs/probe/{CELL}/{{score}}.log",
    benchmark:
        f"results/benchmarks/probe/{CELL}/{{score}}.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=60,
        budget_mb=BUDGET_MB,
    params:
        time=get_probe_time,
        sampler=get_probe_sampler,
        probes=section("probes"),
        baseline=get_baseline,
    script:
        "../../scripts/probe.py"
