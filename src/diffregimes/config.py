"""Config checks that a JSON schema cannot make, run before any job is planned.

The schema (workflow/schemas/config.schema.yaml) checks types, ranges and enums. What it cannot
say well is checked here, each failure a `ConfigError` that names the key:
- a key written twice in the YAML (YAML silently keeps the last one: a second `gmm:` entry
  would replace the first without a word);
- an unknown key, with the known key it most likely meant ("did you mean 'sigma'?");
- relations between keys: t_min < T, scores that exist, image sizes that match d, ...

The grid helpers (`dimensions`, `side_of`) live here too, so the workflow and the scripts agree
on the d of an image dataset (d = channels × side²).
"""

from __future__ import annotations

import difflib
import functools
import math
from pathlib import Path

import yaml

# Scores with a closed form (no training): the law's, the training set's (memorises), and the
# Gaussian fit to the training set (the optimal linear denoiser, SCIENCE.md §7).
EXACT_SCORES = ("population", "empirical", "gaussian")
# Closed-form scores with settings, named entries under `baselines` (SCIENCE.md §7).
BASELINE_KINDS = ("smoothed", "local")
SYNTHETIC_KINDS = ("gmm", "gaussian")
# Samplers whose backward run is a posterior draw (samplers.STOCHASTIC; a test keeps the two
# equal): clones and probes run one of them, Euler–Maruyama when the run's is deterministic.
STOCHASTIC_SAMPLERS = ("euler_maruyama", "ddpm", "ddpm_posterior")
IMAGE_KINDS = ("digits", "fashion_mnist", "idx", "npz", "cifar10", "image_folder")
# Keys that belong to one family of kinds only (a gmm with `sizes:` is a mistake, not a no-op).
IMAGE_ONLY_KEYS = (
    "path",
    "classes",
    "balanced",
    "sizes",
    "upscale",
    "grayscale",
    "skip_if_missing",
    "channels",
)
FASHION_MNIST_PATH = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist


class ConfigError(ValueError):
    """A config value that cannot run; `key` is its dotted path, e.g. datasets.gmm.n."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"config key '{key}': {message}")


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping key written twice."""


def _construct_mapping(loader, node, deep=False):
    seen: dict = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: its keys may be overridden
            continue
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(
                str(key),
                f"written twice in the same section (lines {seen[key] + 1} and "
                f"{key_node.start_mark.line + 1} of {key_node.start_mark.name}); YAML would keep "
                "only the last one. Rename one of them (dataset names must be unique) or merge "
                "them.",
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def check_duplicate_keys(path: str | Path) -> None:
    """Raise ConfigError if the YAML file at `path` has a key twice in one mapping."""
    path = Path(path)
    with path.open() as f:
        yaml.load(f, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)


def import_closure(script: str | Path, package: str | Path, *more: str | Path) -> list[str]:
    """The modules of `package` (a folder) that `script` (and the files `more`, e.g. the
    notebook a report script renders) imports, directly or through each other, at any depth
    and inside functions too: sorted module names without ".py".

    Read from the source with `ast` (nothing is imported), so a rule's code inputs follow the
    imports. Recognised forms: ``import pkg.mod``, ``from pkg import mod``, ``from pkg.mod
    import x`` and, inside the package, ``from . import mod`` and ``from .mod import x``.
    Each file is parsed once per content (`_direct_imports` is cached on its mtime), however
    many rules share it."""
    package = Path(package).resolve()

    def direct(path: Path) -> frozenset:
        path = Path(path).resolve()
        return _direct_imports(path, path.stat().st_mtime_ns, package)

    seen: set[str] = set()
    todo = [m for path in (script, *more) for m in direct(path)]
    while todo:
        mod = todo.pop()
        if mod not in seen:
            seen.add(mod)
            todo.extend(direct(package / f"{mod}.py"))
    return sorted(seen)


def _source(path: Path) -> str:
    """A module's text, or a papermill template's code cells without IPython magics."""
    if path.suffix != ".ipynb":
        return path.read_text()
    import json

    cells = json.loads(path.read_text())["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    return "\n".join(line for line in code.splitlines() if not line.lstrip().startswith(("%", "!")))


@functools.cache
def _direct_imports(path: Path, mtime_ns: int, package: Path) -> frozenset:
    """The modules of `package` that the file at `path` imports itself (see import_closure)."""
    import ast

    name = package.name
    found = set()
    for node in ast.walk(ast.parse(_source(path), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == name and len(parts) > 1:
                    found.add(parts[1])
        elif isinstance(node, ast.ImportFrom):
            inside = node.level > 0 and path.parent == package
            parts = (node.module or "").split(".")
            if node.level == 0 and parts[0] == name:
                parts = parts[1:]
            elif not inside:
                continue
            if parts and parts[0]:
                found.add(parts[0])
            else:  # from pkg import mod / from . import mod
                found.update(alias.name for alias in node.names)
    return frozenset(m for m in found if (package / f"{m}.py").is_file())


def check_unknown_keys(cfg, schema: dict, where: str = "") -> None:
    """Raise ConfigError for the first key the schema does not know, with the closest one."""
    if not isinstance(cfg, dict) or schema.get("type") != "object":
        return
    props = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    for key, value in cfg.items():
        path = f"{where}.{key}" if where else str(key)
        if key in props:
            check_unknown_keys(value, props[key], path)
        elif isinstance(extra, dict):  # named entries (datasets, models): each one's keys
            check_unknown_keys(value, extra, path)
        elif extra is False:
            close = difflib.get_close_matches(str(key), list(props), n=1, cutoff=0.6)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            section = f"'{where}'" if where else "the top level"
            raise ConfigError(
                path,
                f"unknown key in {section}.{hint} Known keys: {', '.join(props)}.",
            )


def data_path(spec: dict) -> str | None:
    """The files an image dataset reads (None for digits, which sklearn ships)."""
    if spec["kind"] == "fashion_mnist":
        return spec.get("path") or FASHION_MNIST_PATH
    return spec.get("path")


def drop_missing_optional(cfg: dict) -> list[str]:
    """Remove the image datasets marked `skip_if_missing: true` whose files are absent (the
    default grid's Fashion-MNIST on a machine without Debian's package); one warning each,
    saying how to add them. Any other dataset with missing files is an error of its job."""
    warnings = []
    for name, ds in list(cfg["datasets"].items()):
        path = data_path(ds) if ds["kind"] in IMAGE_KINDS else None
        if ds.get("skip_if_missing") and path and not Path(path).exists():
            del cfg["datasets"][name]
            how = (
                "install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist) "
                "or set its path"
                if ds["kind"] == "fashion_mnist"
                else "put its files there or fix its path"
            )
            warnings.append(
                f"datasets.{name}: {path} does not exist, so this run leaves {name} out "
                f"(skip_if_missing: true). To add it, {how}, and rerun."
            )
    if not cfg["datasets"]:
        raise ConfigError("datasets", "every dataset was left out: " + " ".join(warnings))
    return warnings


def dimensions(spec: dict) -> list[int]:
    """The d values of a dataset: its `d` list, or channels × side² for each image size."""
    if spec["kind"] in IMAGE_KINDS:
        from .images import dimension

        return [dimension(spec, side) for side in spec["sizes"]]
    return list(spec["d"])


def side_of(spec: dict, d: int) -> int:
    """The image side whose d = channels × side² (for the `data` rule of an image cell)."""
    for side in spec["sizes"]:
        from .images import dimension

        if dimension(spec, side) == int(d):
            return int(side)
    raise ConfigError("sizes", f"no size gives d={d} (sizes {spec['sizes']})")


# Sections a dataset entry may override for its own cells (the paper's figures differ in
# their time grids and clone counts); none of them is part of the data.
def model_settings(entry: dict, n: int) -> dict:
    """A `models:` entry as one cell of n training points trains it: `steps_per_point` makes
    the length max(steps, ⌈steps_per_point · n⌉) (τ_mem grows ∝ n, so a grid over n trains
    each cell past it), and `batch_size: full` is full-batch training (every point at every
    step, B = n). The result names only what decides the model, so an explicit equal setting
    gives the same model."""
    out = dict(entry)
    per_point = out.pop("steps_per_point", None)
    if per_point is not None:
        out["steps"] = max(int(out["steps"]), math.ceil(per_point * int(n)))
    if out.get("batch_size") == "full":
        out["batch_size"], out["full_batch"] = int(n), True
    return out


RUN_SECTIONS = ("time", "sampler", "cloning")


def run_settings(cfg: dict, dataset: str, section: str) -> dict:
    """A top-level section (time, sampler, cloning) as one dataset's cells see it: its own
    overrides (`datasets.<name>.<section>`) over the top-level values."""
    return {**cfg[section], **cfg["datasets"][dataset].get(section, {})}


def _check_run_sections(cfg: dict, name: str) -> None:
    own = cfg["datasets"][name]
    time, cloning = run_settings(cfg, name, "time"), run_settings(cfg, name, "cloning")

    def key(section, k):  # the key to fix: the dataset's override if it set one
        return f"datasets.{name}.{section}.{k}" if k in own.get(section, {}) else f"{section}.{k}"

    if not time["spacing"].startswith("ddpm_") and time["t_min"] >= time["T"]:
        raise ConfigError(key("time", "t_min"), f"{time['t_min']} must be below T={time['T']}")
    if time["saved"] > time["steps"] + 1:
        raise ConfigError(key("time", "saved"), f"at most steps + 1 = {time['steps'] + 1}")
    if cloning.get("at"):
        from .process import TimeGrid

        try:
            TimeGrid.from_settings(time).clone_indices(cloning)
        except ValueError as err:
            raise ConfigError(key("cloning", "at"), str(err)) from None
    elif cloning["t_lo"] >= time["T"]:
        raise ConfigError(key("cloning", "t_lo"), f"must be below T={time['T']}")


def is_closed_form(cfg: dict, score: str) -> bool:
    """An exact score or a baseline: nothing to train, cheap to evaluate."""
    return score in EXACT_SCORES or score in cfg.get("baselines", {})


def check(cfg: dict) -> None:
    """Relations between keys (after the schema filled in the defaults)."""
    models = cfg.get("models", {})
    baselines = cfg.get("baselines", {})
    for name in set(models) & set(baselines):
        raise ConfigError(
            f"baselines.{name}", f"'{name}' is also a model under 'models': rename one of them"
        )
    known = list(EXACT_SCORES) + list(baselines) + list(models)
    for name, ds in cfg["datasets"].items():
        key = f"datasets.{name}"
        _check_run_sections(cfg, name)
        images = ds["kind"] in IMAGE_KINDS
        for score in ds["scores"]:
            if score not in known:
                close = difflib.get_close_matches(score, known, n=1)
                hint = f" Did you mean '{close[0]}'?" if close else ""
                raise ConfigError(
                    f"{key}.scores",
                    f"'{score}' is neither an exact score ({', '.join(EXACT_SCORES)}), nor a "
                    f"baseline under 'baselines' ({', '.join(baselines) or 'none'}), nor a "
                    f"model defined under 'models' ({', '.join(models) or 'none'})." + hint,
                )
            if images and score == "population":
                raise ConfigError(
                    f"{key}.scores",
                    f"'population' needs a known law; {ds['kind']} images have none. Use "
                    "empirical or a model.",
                )
            spec = baselines.get(score, {})
            if spec.get("kind") == "local" and not images:
                raise ConfigError(
                    f"{key}.scores",
                    f"baseline '{score}' is a local patch score, which needs images; "
                    f"{ds['kind']} points are vectors. Use smoothed or gaussian.",
                )
            if spec.get("kind") == "local" and spec["patch"] % 2 == 0:
                raise ConfigError(
                    f"baselines.{score}.patch", f"{spec['patch']} must be odd (a centred patch)"
                )
            if not images and score in models and models[score]["arch"] == "unet":
                raise ConfigError(
                    f"{key}.scores",
                    f"model '{score}' is a unet, which needs images; {ds['kind']} points are "
                    "vectors. Use an mlp model.",
                )
        if images:
            _check_images(ds, key)
        else:
            if "d" not in ds:
                raise ConfigError(f"{key}.d", f"required for kind {ds['kind']} (list of d)")
            stray = [k for k in IMAGE_ONLY_KEYS if k in ds]
            if stray:
                raise ConfigError(
                    f"{key}.{stray[0]}",
                    f"applies to image kinds ({', '.join(IMAGE_KINDS)}) only, not "
                    f"{ds['kind']}. Remove it.",
                )


def _check_images(ds: dict, key: str) -> None:
    if "sizes" not in ds:
        raise ConfigError(f"{key}.sizes", "required for image datasets (image sides, e.g. [8])")
    if ds["kind"] in ("idx", "npz", "cifar10", "image_folder") and not ds.get("path"):
        raise ConfigError(f"{key}.path", f"kind {ds['kind']} reads your files: set their path")
    if "d" in ds:
        expected = dimensions(ds)
        if sorted(ds["d"]) != sorted(expected):
            raise ConfigError(
                f"{key}.d",
                f"{ds['d']} does not match the image sizes {ds['sizes']} (d = channels × side² "
                f"= {expected}). Remove d (it follows from sizes) or fix it.",
            )
