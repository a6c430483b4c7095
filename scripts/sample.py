"""Rule `sample`: backward trajectories and clones of one score on one data cell."""

import torch

from diffregimes import generate, process, store
from diffregimes.joblog import Timer, cell_of, progress_bar, start_job
from diffregimes.seeds import job_seed

sm = snakemake  # noqa: F821 (injected by Snakemake)
w, p, inp = sm.wildcards, sm.params, sm.input
job = start_job(sm.log[0], "sample", sm.threads, sm.resources)
log, device, budget = job.log, job.device, job.budget

train = store.open_store(inp.train, "training set", require=("x",))
seed = job_seed("sample", w.dataset, w.d, w.n, w.seed, w.score)
model = inp.model[0] if inp.get("model") else None  # a learned score's weights
# classify: sign(m·x̂₀) for the GMM; for images, the class judge labels every clone's x̂₀
score, classify = generate.run_score(
    w.score, train, budget, device, model, inp.judge[0] if inp.get("judge") else None, p.baseline
)
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
            progress=bar.update,
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
