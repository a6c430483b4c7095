"""Rule `probe`: forward–backward probes (class and identity retention) of one run's score."""

import torch

from diffregimes import generate, probes, process, store
from diffregimes.joblog import Timer, cell_of, start_job
from diffregimes.seeds import job_seed

sm = snakemake  # noqa: F821 (injected by Snakemake)
w, p, inp = sm.wildcards, sm.params, sm.input
job = start_job(sm.log[0], "probe", sm.threads, sm.resources)
budget, device = job.budget, job.device

train = store.open_store(inp.train, "training set", require=("x",))
held_out = store.open_store(inp.test, "held-out set", require=("x",))
model = inp.model[0] if inp.get("model") else None  # a learned score's weights
# for images the class judge labels start and end points
score, classify = generate.run_score(
    w.score, train, budget, device, model, inp.judge[0] if inp.get("judge") else None, p.baseline
)
grid = process.TimeGrid.from_settings(p.time)  # without `saved`: the probes keep no states
sampler = p.sampler  # the run's when stochastic, else Euler–Maruyama (common.smk)
seed = job_seed("probe", w.dataset, w.d, w.n, w.seed, w.score)
with Timer(job.log, f"forward–backward probes of {w.score}, {sampler}, job seed {seed}"):
    ds = probes.probe_store(
        score,
        torch.as_tensor(train["x"].values, dtype=torch.float32, device=device),
        torch.as_tensor(held_out["x"].values, dtype=torch.float32, device=device),
        grid.times,
        p.probes,
        sampler,
        seed,
        budget,
        classify,
        noisy_last=grid.noisy_last,
    )
ds.attrs.update(cell_of(w))
store.write(ds, sm.output[0])
