# Training and held-out sets of each (dataset, d, n, seed) cell.


rule data:
    input:
        code=code("make_data", "data", "seeds", "store"),
    output:
        train=directory(f"results/data/{CELL}/train.zarr"),
        test=directory(f"results/data/{CELL}/test.zarr"),
    log:
        f"results/logs/data/{CELL}.log",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        spec=get_dataset_spec,
    script:
        "../../scripts/make_data.py"
