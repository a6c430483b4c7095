"""Bad configs fail before any job runs, with a message that names the key.

Each case edits tests/config/tiny.yaml, dry-runs the real workflow on it, and checks the exit
status, the key in the message, and that nothing was written under results/.
"""

from __future__ import annotations

import pytest
import yaml
from workflow_helpers import TINY, snakemake

from diffregimes import config as config_checks


def _gmm(c):
    return c["datasets"]["gmm"]


def _drop(mapping, key):
    mapping.pop(key)


def _digits(c, **extra):
    c["datasets"]["digits"] = {"kind": "digits", "sizes": [8], "n": [32], "scores": ["empirical"]}
    c["datasets"]["digits"].update(extra)


BAD = {
    "wrong type": (lambda c: c["time"].update(steps="many"), "steps"),
    "zero n": (lambda c: _gmm(c).update(n=[0, 16]), "'n'"),
    "negative n": (lambda c: _gmm(c).update(n=[-16]), "'n'"),
    "unknown dataset kind": (lambda c: _gmm(c).update(kind="mnist-ish"), "mnist-ish"),
    "unknown score": (lambda c: _gmm(c).update(scores=["exact"]), "datasets.gmm.scores"),
    "unknown sampler": (lambda c: c["sampler"].update(name="leapfrog"), "leapfrog"),
    "model name not defined": (
        lambda c: _gmm(c).update(scores=["mpl"]),
        "Did you mean 'mlp'",
    ),
    "unknown arch": (lambda c: c["models"]["mlp"].update(arch="transformer"), "arch"),
    "negative learning rate": (lambda c: c["models"]["mlp"].update(lr=-1.0), "lr"),
    "t_min >= T": (lambda c: c["time"].update(t_min=7.0, T=6.0), "time.t_min"),
    "empty grid of n": (lambda c: _gmm(c).update(n=[]), "'n'"),
    "no datasets": (lambda c: c.update(datasets={}), "datasets"),
    "missing required key": (lambda c: _drop(_gmm(c), "kind"), "'kind' is a required property"),
    "missing d of a synthetic law": (lambda c: _drop(_gmm(c), "d"), "datasets.gmm.d"),
    "unknown key, close to a known one": (
        lambda c: _gmm(c).update(sigam=1.0),
        "datasets.gmm.sigam': unknown key in 'datasets.gmm'. Did you mean 'sigma'?",
    ),
    "unknown section, close to a known one": (
        lambda c: c.update(sampeler={"name": "ddim"}),
        "Did you mean 'sampler'?",
    ),
    "d not matching the image size": (lambda c: _digits(c, d=[65]), "datasets.digits.d"),
    "population score of images": (
        lambda c: _digits(c, scores=["population"]),
        "datasets.digits.scores",
    ),
    "image key on a synthetic law": (lambda c: _gmm(c).update(sizes=[8]), "datasets.gmm.sizes"),
    "bring-your-own images without a path": (
        lambda c: _digits(c, kind="idx"),
        "datasets.digits.path",
    ),
    "baseline named like a model": (
        lambda c: c["baselines"].update(mlp={"kind": "smoothed", "sigma_s": 0.2}),
        "baselines.mlp",
    ),
    "baseline name not defined": (
        lambda c: _gmm(c).update(scores=["smoth"]),
        "Did you mean 'smooth'",
    ),
    "negative blur": (lambda c: c["baselines"]["smooth"].update(sigma_s=-0.1), "sigma_s"),
    "baseline without sigma_s": (
        lambda c: _drop(c["baselines"]["smooth"], "sigma_s"),
        "'sigma_s' is a required property",
    ),
    "local baseline on vectors": (
        lambda c: (
            c["baselines"].update(patchy={"kind": "local", "patch": 3}),
            _gmm(c).update(scores=["patchy"]),
        ),
        "is a local patch score, which needs images",
    ),
    "even patch": (
        lambda c: (
            c["baselines"].update(patchy={"kind": "local", "patch": 4}),
            _digits(c, scores=["patchy"]),
        ),
        "baselines.patchy.patch",
    ),
    "smoothed baseline with a patch": (
        lambda c: c["baselines"]["smooth"].update(patch=3),
        "baselines",
    ),
    "smoothed baseline made equivariant": (
        lambda c: c["baselines"]["smooth"].update(equivariant=True),
        "baselines",
    ),
    "unet on vectors": (
        lambda c: c["models"]["mlp"].update(arch="unet"),
        "model 'mlp' is a unet",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_config_fails_before_any_job(tmp_path, case):
    edit, key = BAD[case]
    cfg = yaml.safe_load(TINY.read_text())
    edit(cfg)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = snakemake(tmp_path, "-n", config=path, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, f"{case}: the workflow accepted the config"
    assert key in out, f"{case}: {key!r} not in the message:\n{out[-2000:]}"
    assert not (tmp_path / "results").exists()


def test_duplicate_dataset_name_fails_with_both_lines(tmp_path):
    """YAML keeps the last of two equal keys without a word: the workflow refuses instead."""
    text = TINY.read_text()
    block = text[text.index("  gmm:") : text.index("  gauss:")]
    path = tmp_path / "dup.yaml"
    path.write_text(text.replace("  gauss:", block + "  gauss:", 1))
    assert len(yaml.safe_load(path.read_text())["datasets"]) == 2  # plain YAML hides it
    proc = snakemake(tmp_path, "-n", config=path, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "config key 'gmm': written twice" in out and str(path) in out
    assert not (tmp_path / "results").exists()


def test_yaml_merge_keys_pass_the_duplicate_check_and_a_real_duplicate_still_fails(tmp_path):
    """`<<: *anchor` then an overridden key (config/reproduce.yaml's models) is not a key written
    twice; the same key twice in one mapping still is."""
    from diffregimes.config import ConfigError, check_duplicate_keys

    path = tmp_path / "merge.yaml"
    path.write_text("models:\n  a: &m {arch: mlp, width: 128}\n  b: {<<: *m, width: 32}\n")
    check_duplicate_keys(path)
    assert yaml.safe_load(path.read_text())["models"]["b"] == {"arch": "mlp", "width": 32}
    path.write_text("models:\n  a: &m {arch: mlp}\n  b: {<<: *m, width: 32, width: 64}\n")
    with pytest.raises(ConfigError, match="'width': written twice"):
        check_duplicate_keys(path)


def test_unknown_key_suggestion_needs_a_close_match():
    schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {"sigma": {}, "mu": {}},
    }
    with pytest.raises(config_checks.ConfigError, match="Did you mean 'sigma'"):
        config_checks.check_unknown_keys({"sigam": 1}, schema)
    with pytest.raises(config_checks.ConfigError) as err:
        config_checks.check_unknown_keys({"zzz": 1}, schema)
    assert "Did you mean" not in str(err.value) and "Known keys: sigma, mu" in str(err.value)
    config_checks.check_unknown_keys({"sigma": 1, "mu": 2}, schema)  # known keys pass


def test_image_dimensions_follow_the_sizes():
    assert config_checks.dimensions({"kind": "digits", "sizes": [4, 8, 12]}) == [16, 64, 144]
    assert config_checks.side_of({"kind": "digits", "sizes": [4, 8]}, 64) == 8
    assert config_checks.dimensions({"kind": "gmm", "d": [3, 5]}) == [3, 5]


def test_validation_fills_each_kind_with_its_own_defaults_only():
    """The schema's defaults are per kind (if/then on `kind` and `arch`): after validation the
    default config's digits entry holds no GMM key and its MLP no U-Net key, while the GMM and
    the U-Net get theirs."""
    from pathlib import Path

    from snakemake.utils import validate

    root = Path(__file__).resolve().parents[1]
    cfg = yaml.safe_load((root / "config" / "config.yaml").read_text())
    validate(cfg, str(root / "workflow" / "schemas" / "config.schema.yaml"))
    law = {"mu", "sigma", "direction", "lambda_max", "decay"}
    assert not law & set(cfg["datasets"]["digits"]), cfg["datasets"]["digits"]
    assert {"mu", "sigma", "direction"} <= set(cfg["datasets"]["gmm"])
    assert not {"lambda_max", "decay"} & set(cfg["datasets"]["gmm"])
    assert "widths" not in cfg["models"]["mlp"] and {"width", "depth"} <= set(cfg["models"]["mlp"])
    assert "width" not in cfg["models"]["unet"] and cfg["models"]["unet"]["widths"] == [32, 64]
    assert cfg["datasets"]["gmm"]["test_size"] == 1024  # defaults of every kind still apply


def test_the_config_knows_the_stochastic_samplers():
    """common.smk picks the probes' sampler without importing torch: config's list must be
    samplers.STOCHASTIC."""
    from diffregimes import samplers

    assert set(config_checks.STOCHASTIC_SAMPLERS) == samplers.STOCHASTIC
