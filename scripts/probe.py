"""Rule `probe`: forward–backward probes (class and identity retention) of one run's score."""

import functools

import torch

from diffregimes import generate, judge, probes, process, store
from diffregimes.device import job_device
from diffregimes.joblog import Timer, cell_of, start_log
from diffregimes.seeds import job_seed

sm = snakemake  # noqa: F821 (injected by Snakemake)
w, p = sm.wildcards, sm.params
budget = sm.resources.budget_mb * 2**20  # the chunked kernels' memory budget
log = start_log(sm.log[0], "probe")
device = job_device(log, sm.threads, sm.resources.get("gpu"))

train = store.open_store(sm.input.train, "training set", require=("x",))
test = store.open_store(sm.input.test, "held-out set", require=("x",))
model = sm.input.model[0] if sm.input.get("model") else None  # a learned score's weights
judged = None
if sm.input.get("judge"):  # images: the class judge labels start and end points
    net, _, _ = judge.load_judge(sm.input.judge[0], device)
    judged = None if net is None else functools.partial(judge.judge_classes, net)
classify = generate.classifier(train, judged)
score = generate.build_score(w.score, train, budget, device, model_path=model, baseline=p.baseline)
grid = process.TimeGrid.from_settings(p.time)  # without `saved`: the probes keep no states
sampler = p.sampler  # the run's when stochastic, else Euler–Maruyama (common.smk)
seed = job_seed("probe", w.dataset, w.d, w.n, w.seed, w.score)
with Timer(log, f"forward–backward probes of {w.score}, {sampler}, job seed {seed}"):
    ds = probes.probe_store(
        score,
        torch.as_tensor(train["x"].values, dtype=torch.float32, device=device),
        torch.as_tensor(test["x"].values, dtype=torch.float32, device=device),
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
