# Learned scores: training per (dataset, d, n, seed, model), and the training-time axis.


rule train:
    input:
        train=TRAIN_STORE,
        code=code("train"),
    output:
        model=f"results/models/{CELL}/{{model}}/final.pt",
        log_store=directory(f"results/models/{CELL}/{{model}}/train_log.zarr"),
    log:
        f"results/logs/train/{CELL}/{{model}}.log",
    benchmark:
        f"results/benchmarks/train/{CELL}/{{model}}.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        gpu=1,
        mem_mb=mem_mb_of("train"),
        runtime=runtime_of("train", 240),
    params:
        model=get_model_cfg,
        time=get_training_time,
    script:
        "../../scripts/train.py"


rule training_axis:
    input:
        model=f"results/models/{CELL}/{{model}}/final.pt",
        train=TRAIN_STORE,
        test=f"results/data/{CELL}/test.zarr",
        code=code("training_axis"),
    output:
        directory(f"results/training/{CELL}/{{model}}.zarr"),
    log:
        f"results/logs/training_axis/{CELL}/{{model}}.log",
    benchmark:
        f"results/benchmarks/training_axis/{CELL}/{{model}}.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=60,
        budget_mb=BUDGET_MB,
    params:
        model=get_model_cfg,
        axis=section("training_axis"),
        time=get_time,
        baselines=get_dataset_baselines,
    script:
        "../../scripts/training_axis.py"
