# Training and held-out sets of each (dataset, d, n, seed) cell, and the class judge of each
# image dataset and size.


rule data:
    input:
        code=code("make_data"),
    output:
        train=directory(f"results/data/{CELL}/train.zarr"),
        test=directory(f"results/data/{CELL}/test.zarr"),
    log:
        f"results/logs/data/{CELL}.log",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        spec=get_dataset_spec,
        side=get_side,
    script:
        "../../scripts/make_data.py"


rule judge:
    input:
        code=code("judge"),
    output:
        "results/judges/{dataset}/d{d}/judge.pt",
    log:
        "results/logs/judge/{dataset}/d{d}.log",
    benchmark:
        "results/benchmarks/judge/{dataset}/d{d}.tsv"
    conda:
        CONDA_ENV
    threads: 2
    # gpu=0: the judge (a small CNN, minutes on the CPU) asks for no GPU, and gpu=0 makes
    # job_device keep it on the CPU even where it sees one (scheduler and device agree)
    resources:
        gpu=0,
        mem_mb=4000,
        runtime=30,
    params:
        spec=get_dataset_spec,
        side=get_side,
        judge=section("judge"),
    script:
        "../../scripts/judge.py"
