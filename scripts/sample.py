"""Rule `sample`: backward trajectories and clones of one score on one data cell."""

from diffregimes import generate, store
from diffregimes.device import job_device
from diffregimes.joblog import Timer, progress_bar, start_log
from diffregimes.seeds import job_seed

sm = snakemake  # noqa: F821 (injected by Snakemake)
w, p = sm.wildcards, sm.params
log = start_log(sm.log[0], "sample")
device = job_device(log, sm.threads, sm.resources.get("gpu"))

train = store.open_store(sm.input.train)
seed = job_seed("sample", w.dataset, w.d, w.n, w.seed, w.score)
model = sm.input.model[0] if sm.input.get("model") else None  # a learned score's weights
score = generate.build_score(w.score, train, p.budget, device, model_path=model)
bar = progress_bar(generate.planned_steps(p.time, p.cloning), "integration steps", sm.log[0])
with Timer(log, f"sampling {w.score} score, job seed {seed}"):
    ds = generate.sample_trajectories(
        score,
        int(w.d),
        p.time,
        p.sampler,
        p.cloning,
        seed,
        device,
        progress=lambda _: bar.update(),
    )
bar.close()
ds.attrs.update(dataset=w.dataset, d=int(w.d), n=int(w.n), seed=int(w.seed), score=w.score)
store.write(ds, sm.output[0])
