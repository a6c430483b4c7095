"""Rule `sample`: backward trajectories and clones of one score on one data cell."""

import functools

import torch

from diffregimes import generate, judge, process, store
from diffregimes.device import job_device
from diffregimes.joblog import Timer, cell_of, progress_bar, start_log
from diffregimes.seeds import job_seed

sm = snakemake  # noqa: F821 (injected by Snakemake)
w, p = sm.wildcards, sm.params
budget = sm.resources.budget_mb * 2**20  # the chunked kernels' memory budget
log = start_log(sm.log[0], "sample")
device = job_device(log, sm.threads, sm.resources.get("gpu"))

train = store.open_store(sm.input.train, "training set", require=("x",))
seed = job_seed("sample", w.dataset, w.d, w.n, w.seed, w.score)
model = sm.input.model[0] if sm.input.get("model") else None  # a learned score's weights
judged = None  # images: the class judge labels every clone's x̂₀
if sm.input.get("judge"):
    net, _, _ = judge.load_judge(sm.input.judge[0], device)
    judged = None if net is None else functools.partial(judge.judge_classes, net)
classify = generate.classifier(train, judged)  # GMM: sign(m·x̂₀)
score = generate.build_score(w.score, train, budget, device, model_path=model, baseline=p.baseline)
grid = process.TimeGrid.from_settings(p.time)  # the job's one time grid
bar = progress_bar(generate.planned_steps(grid, p.cloning), "integration steps", sm.log[0])
with Timer(log, f"sampling {w.score} score, job seed {seed}"):
    try:
        ds = generate.sample_trajectories(
            score,
            int(w.d),
            grid,
            p.sampler,
            p.cloning,
            seed,
            device,
            progress=lambda _: bar.update(),
            train_x=torch.as_tensor(train["x"].values, dtype=torch.float32, device=device),
            classify=classify,
            budget_bytes=budget,
        )
    except FloatingPointError as err:
        fix = (
            f"the model {model} gives a non-finite score there: lower models.{w.score}.lr or "
            "grad_clip in the config and rerun snakemake (the model is trained again)"
            if model
            else "an exact score is finite for t > 0: check the dataset's law keys and time.t_min"
        )
        raise FloatingPointError(f"{err}, {w.score} score; no trajectories written. {fix}") from err
bar.close()
ds.attrs.update(cell_of(w))
store.write(ds, sm.output[0])
