"""Rule `training_axis`: f_mem and score errors along training, from the model's checkpoints."""

from diffregimes import generate, nets, process, store, training_axis
from diffregimes.data import SYNTHETIC_KINDS
from diffregimes.joblog import Timer, cell_of, start_job
from diffregimes.seeds import job_seed

sm = snakemake  # noqa: F821 (injected by Snakemake)
w, p = sm.wildcards, sm.params
job = start_job(sm.log[0], "training_axis", sm.threads, sm.resources)
log, device, budget = job.log, job.device, job.budget

train = store.open_store(sm.input.train, "training set", require=("x",))
test = store.open_store(sm.input.test, "held-out set", require=("x",))
net = nets.load_trained(sm.input.model, device)
known_law = train.attrs["kind"] in SYNTHETIC_KINDS  # real images: no population score
population = generate.build_score("population", train, budget, device) if known_law else None
# the closed-form scores the network is compared with besides population and empirical (r²)
references = {"gaussian": generate.build_score("gaussian", train, budget, device)}
for name, spec in p.baselines.items():  # the dataset's baselines (smoothed: each σ_s)
    references[name] = generate.build_score(name, train, budget, device, baseline=spec)
seed = job_seed("training_axis", w.dataset, w.d, w.n, w.seed, w.model)
with Timer(log, f"training axis of {w.model}, job seed {seed}"):
    ds = training_axis.measure_training_axis(
        net,
        store.recorded_checkpoints(sm.input.model),
        p.model,
        p.axis,
        train,
        test,
        population,
        process.TimeGrid.from_settings(p.time),
        seed,
        budget,
        device,
        references,
    )
ds.attrs.update(cell_of(w), seed_job=seed, settings={"axis": p.axis, "sampler": "ddim"})
log.info("tau_mem = %.4g", float(ds.tau_mem))
store.write(ds, sm.output[0])
