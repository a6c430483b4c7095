"""One seed per job, derived from its wildcards and the config seed.

A rerun of the same job draws identical numbers on the CPU; two jobs never share a stream.
The derivation is a hash of the parts, stable across Python processes (unlike `hash`)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def job_seed(*parts) -> int:
    """A 63-bit seed from a job's identity.

    Example: ``job_seed("sample", "gmm", 32, 512, 0, "empirical")``."""
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def fingerprint(*parts) -> str:
    """A hex digest of settings (dicts by sorted keys): checkpoints carry it, so a rerun
    resumes only from checkpoints written with the same settings."""
    import json

    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def array_digest(a) -> str:
    """A hex digest of an array's content (dtype, shape and bytes): a training fingerprint
    holds it, so a job never resumes a checkpoint trained on other data."""
    import numpy as np

    a = np.ascontiguousarray(np.asarray(a))
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()[:16]


def training_fingerprint(settings: dict, time: dict, seed: int, x, code_paths) -> str:
    """The resume fingerprint of a training job: the model settings, the time span, the seed,
    the training data's content (`array_digest`, not a timestamp) and the text of the code that
    decides the model; a rerun after a change to any of them never resumes stale work."""
    n, d = x.shape
    code = [Path(f).read_text() for f in code_paths]
    return fingerprint(settings, time, seed, int(n), int(d), array_digest(x), code)
