# Config checks (before any job is planned), the run table, and path helpers.
import itertools
import sys

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.utils import validate

sys.path.insert(0, f"{workflow.basedir}/src")  # the library, also without `pip install`
from diffregimes import config as config_checks

PKG = f"{workflow.basedir}/src/diffregimes"
CONDA_ENV = "../../envs/diffregimes.yaml"
SCHEMA = f"{workflow.basedir}/workflow/schemas/config.schema.yaml"


def checked_config(cfg):
    """Duplicate and unknown keys (with 'did you mean'), the schema (types, ranges, enums;
    fills the defaults), then relations between keys. Raises a WorkflowError naming the key.
    """
    files = ", ".join(map(str, workflow.configfiles)) or "none"
    try:
        for path in workflow.configfiles:
            config_checks.check_duplicate_keys(path)
        with open(SCHEMA) as f:
            config_checks.check_unknown_keys(cfg, yaml.safe_load(f))
        validate(cfg, SCHEMA)
        for warning in config_checks.drop_missing_optional(cfg):
            logger.warning(warning)
        config_checks.check(cfg)
    except config_checks.ConfigError as e:
        raise WorkflowError(f"{e} (config file: {files})") from None
    return cfg


checked_config(config)


def data_cells():
    """Every (dataset, d, n, seed) of the grid (image datasets: d = channels × side²)."""
    for name, ds in config["datasets"].items():
        dims = config_checks.dimensions(ds)
        # a dataset's own seeds, else the grid's
        seeds = ds.get("seeds", config["seeds"])
        for d, n, seed in itertools.product(dims, ds["n"], seeds):
            yield dict(dataset=name, d=d, n=n, seed=seed)


def run_table():
    """Every run (dataset, d, n, seed, score) of the grid."""
    for cell in data_cells():
        for score in config["datasets"][cell["dataset"]]["scores"]:
            yield dict(cell, score=score)


CELL = "{dataset}/d{d}/n{n}/s{seed}"


# Plain patterns, not input functions: Snakemake calls an input function (and inspects its
# signature) for every job, a cost that adds up on large grids (bench: dry_run_10k_jobs_s).
TRAIN_STORE = f"results/data/{CELL}/train.zarr"
THEORY_STORE = f"results/theory/{CELL}/theory.zarr"


def metrics_stores(wildcards=None):
    return [
        "results/metrics/{dataset}/d{d}/n{n}/s{seed}/{score}.zarr".format(**run)
        for run in run_table()
    ]


def code(script, notebook=None):
    """A rule's script and every library module it (and the notebook it renders) imports,
    directly or not, as checksummed inputs (derived from the imports, so the list cannot
    drift): a content change reruns the rule, a `touch` does not (the profiles drop the `code`
    rerun trigger, which compares script mtimes)."""
    path = f"{workflow.basedir}/scripts/{script}.py"
    more = (
        [f"{workflow.basedir}/workflow/notebooks/{notebook}.ipynb"] if notebook else []
    )
    names = config_checks.import_closure(path, PKG, *more)
    return [path, *(f"{PKG}/{name}.py" for name in names)]


def get_dataset(w):
    return config["datasets"][w.dataset]


# The keys of a dataset entry that make its grid, not its data: adding an n or a score does
# not rerun the cells that exist already. Every other key (the schema fills only the entry's
# own kind's defaults) defines the data.
GRID_KEYS = (
    "d",
    "n",
    "seeds",
    "sizes",
    "scores",
    "skip_if_missing",
    "entropy_samples",
    *config_checks.RUN_SECTIONS,
)


def canonical(value):
    """Sorted-key copy of a config section: reordering keys in the YAML reruns nothing."""
    if isinstance(value, dict):
        return {k: canonical(value[k]) for k in sorted(value)}
    return value


# The paper's numbers the reproduction report compares against (one entry per number).
REFERENCE = f"{workflow.basedir}/workflow/reference/paper.yaml"


def get_laws():
    """Every dataset's law and settings (name → entry without its grid lists): the
    reproduction selects the runs that measure a paper's number by these."""
    return canonical(  # sorted names too: reordering the datasets in the YAML reruns nothing
        {
            name: {k: v for k, v in spec.items() if k not in GRID_KEYS}
            for name, spec in config["datasets"].items()
        }
    )


def get_dataset_spec(w):
    """The dataset's law and settings: every key of its entry but the grid lists."""
    spec = get_dataset(w)
    return canonical({k: v for k, v in spec.items() if k not in GRID_KEYS})


def get_side(w):
    """The image side of an image cell (d = channels × side²); 0 for synthetic data."""
    spec = get_dataset(w)
    if spec["kind"] not in config_checks.IMAGE_KINDS:
        return 0
    return config_checks.side_of(spec, int(w.d))


def is_images(dataset):
    return config["datasets"][dataset]["kind"] in config_checks.IMAGE_KINDS


def get_judge(w):
    """The class judge of an image dataset at this d (labels clone end points for φ)."""
    return (
        [f"results/judges/{w.dataset}/d{w.d}/judge.pt"] if is_images(w.dataset) else []
    )


def section(name):
    """A config section as a rule param (canonical key order)."""
    return canonical(config[name])


def run_reports(ext="html"):
    """Every run report (or its thumbnail), in run-table order."""
    return [
        "results/reports/runs/{dataset}/d{d}/n{n}/s{seed}/{score}.{ext}".format(
            ext=ext, **run
        )
        for run in run_table()
    ]


def get_train_log(w):
    """A learned score's training log, for its run report."""
    if not is_model(w.score):
        return []
    return [f"{model_dir(w)}/train_log.zarr"]


def is_model(score):
    return score in config["models"]


def model_dir(w):
    return f"results/models/{w.dataset}/d{w.d}/n{w.n}/s{w.seed}/{w.score}"


def is_baseline(score):
    return score in config["baselines"]


def baseline_kind(score):
    """The kind of a baseline (smoothed, local); None for any other score."""
    return config["baselines"].get(score, {}).get("kind")


def get_baseline(w):
    """A baseline's config entry (kind and settings) as a param of `sample`; {} otherwise."""
    return canonical(config["baselines"].get(w.score, {}))


def get_dataset_baselines(w):
    """The baselines a dataset samples with (name → entry): the references a learned score of
    the dataset is compared with, besides population, empirical and gaussian."""
    scores = get_dataset(w)["scores"]
    return canonical({k: v for k, v in config["baselines"].items() if k in scores})


def get_theory(w):
    """The theory store a run is measured against: its cell's, or for a smoothed baseline the
    cell's training set blurred by N(0, σ_s² I) (its own f^e and t_C)."""
    if baseline_kind(w.score) == "smoothed":
        return f"results/theory/{w.dataset}/d{w.d}/n{w.n}/s{w.seed}/baselines/{w.score}.zarr"
    return THEORY_STORE.format(**w)


def get_blur(w):
    """σ_s of the smoothed baseline whose theory store this is."""
    return float(config["baselines"][w.baseline]["sigma_s"])


def get_score_inputs(w):
    """Inputs of `sample` beyond the data (a learned score's final weights)."""
    return [f"{model_dir(w)}/final.pt"] if is_model(w.score) else []


def get_training_axis(w):
    """A learned score's training-time axis, merged into its metrics store."""
    if not is_model(w.score):
        return []
    return [f"results/training/{w.dataset}/d{w.d}/n{w.n}/s{w.seed}/{w.score}.zarr"]


def get_model_cfg(w):
    """The model entry as this cell trains it (its length and batch resolved for n)."""
    return canonical(config_checks.model_settings(config["models"][w.model], int(w.n)))


def run_section(w, name):
    """A section (time, sampler, cloning) as this dataset's cells see it: the dataset's own
    overrides over the top-level values."""
    return canonical(config_checks.run_settings(config, w.dataset, name))


def get_time(w):
    return run_section(w, "time")


def get_sampler(w):
    return run_section(w, "sampler")


def get_probe_time(w):
    """The time grid the probes run back on (the saved times do not change them)."""
    return {k: run_section(w, "time")[k] for k in ("T", "t_min", "steps", "spacing")}


def get_probe_sampler(w):
    """The sampler of the probes: the run's when stochastic, else Euler–Maruyama (a
    deterministic backward map is not a posterior draw)."""
    name = get_sampler(w)["name"]
    return name if name in config_checks.STOCHASTIC_SAMPLERS else "euler_maruyama"


def get_training_time(w):
    """The time span training draws t from (T, t_min): the saved times or the grid's step
    count do not change a model, so they do not retrain it."""
    return {k: run_section(w, "time")[k] for k in ("T", "t_min")}


def get_cloning(w):
    """The cloning settings of one score: `exact_pairs` pairs for the exact scores (cheap, so
    many: the SE of t_S falls like 1/√pairs), `pairs` for a learned one."""
    cfg = run_section(w, "cloning")
    pairs = (
        cfg["exact_pairs"]
        if config_checks.is_closed_form(config, w.score)
        else cfg["pairs"]
    )
    out = {"times": cfg["times"], "t_lo": cfg["t_lo"], "pairs": pairs}
    out.update({k: cfg[k] for k in ("at", "stored_pairs") if cfg.get(k)})
    return out


def get_entropy_samples(w):
    """Monte Carlo samples per time of f^e: the dataset's own, else metrics.entropy_samples."""
    own = get_dataset(w).get("entropy_samples")
    return own or config["metrics"]["entropy_samples"]


# The memory budget of the chunked kernels does not change results, so it is a resource (a
# change reruns nothing), not a param.
BUDGET_MB = int(config["metrics"]["memory_budget_mb"])


def budget_bytes():
    return BUDGET_MB * 2**20


def get_metrics_settings():
    """The metrics section as the metrics rule's param, without the memory budget."""
    return {k: v for k, v in section("metrics").items() if k != "memory_budget_mb"}


# Full garbage collections rescan every live object, and Snakemake keeps millions alive (jobs,
# file names, wildcards) while it plans a large grid: with Python's default thresholds they took
# ~10% of the CPU of a 10 000-job dry run (bench: dry_run_10k_jobs_s). Make them about 100 times
# rarer; the young generations are collected as before. This tunes the Snakemake process only:
# the jobs run in their own processes.
import gc

gc.set_threshold(*gc.get_threshold()[:2], 1000)


# --- resources: what each heavy job costs (diffregimes.resources), asked for in its rule ---
import atexit
import functools
import json

from diffregimes import resources as cost_model

ESTIMATES = {}  # (rule, job) → (seconds, on a GPU, mem_mb): one entry per planned job


@functools.lru_cache(maxsize=None)
def _grid(time_json):
    """A time section's grid (process.TimeGrid), built once per section for the cost model."""
    from diffregimes import process

    return process.TimeGrid.from_settings(json.loads(time_json))


@functools.lru_cache(maxsize=None)
def _clones(time_json, cloning_json):
    """(clone times, Σ over them of the steps left to t_min) of a time and cloning section."""
    grid = _grid(time_json)
    idx = grid.clone_indices(json.loads(cloning_json))
    return len(idx), int(sum(len(grid) - 1 - k for k in idx))


def _json(section):
    return json.dumps(section, sort_keys=True)


def job_cost(stage, w):
    """(Cost, on a GPU) of one job of a heavy rule, recorded for the dry run's table."""
    d, n, side = int(w.d), int(w.n), get_side(w)
    time_cfg = get_time(w)
    grid = _grid(_json(time_cfg))
    steps, saved = len(grid) - 1, len(grid.saved)
    if stage == "sample":
        cloning, sampler = get_cloning(w), get_sampler(w)
        clone_times, clone_steps = _clones(_json(time_cfg), _json(cloning))
        cost = cost_model.sample_cost(
            d,
            n,
            baseline_kind(w.score) or w.score,
            {**time_cfg, "steps": steps},
            sampler,
            cloning,
            saved,
            clone_steps,
            (
                config_checks.model_settings(config["models"][w.score], n)
                if is_model(w.score)
                else config["baselines"].get(w.score)
            ),
            side,
            clone_times,
            budget_bytes(),
        )
        gpu = True
    elif stage == "theory":
        cost = cost_model.theory_cost(
            d, n, saved, get_entropy_samples(w), budget_bytes()
        )
        gpu = cost.seconds(gpu=False) > 2 * 3600  # a CPU thread would take hours
    elif stage == "train":
        cost = cost_model.train_cost(
            config_checks.model_settings(config["models"][w.model], n), d, side
        )
        gpu = True
    else:  # metrics
        samples = get_sampler(w)["samples"]
        cost = cost_model.metrics_cost(d, n, samples, saved, budget_bytes())
        gpu = False
    key = (stage, tuple(sorted(dict(w).items())))
    ESTIMATES[key] = (cost.seconds(gpu), gpu, cost.mem_mb())
    return cost, gpu


def mem_mb_of(stage, floor=4000):
    return lambda w: max(floor, job_cost(stage, w)[0].mem_mb())


def runtime_of(stage, floor=30):
    def runtime(w):
        cost, gpu = job_cost(stage, w)
        return max(floor, cost_model.runtime_min(cost.seconds(gpu)))

    return runtime


def gpu_of(stage):
    return lambda w: int(job_cost(stage, w)[1])


def _print_estimates():
    if workflow.dryrun and ESTIMATES:
        per_rule = {}
        for (stage, _), value in ESTIMATES.items():
            per_rule.setdefault(stage, []).append(value)
        print(cost_model.report(per_rule))


atexit.register(_print_estimates)
