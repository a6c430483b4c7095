"""Rule `theory`: spectrum, Λ, t_S and the excess entropy f^e(t) of one training set."""

from diffregimes import process, store, theory_store
from diffregimes.joblog import Timer, cell_of, progress_bar, start_job
from diffregimes.seeds import job_seed

sm = snakemake  # noqa: F821 (injected by Snakemake)
w, p = sm.wildcards, sm.params
job = start_job(sm.log[0], "theory", sm.threads, sm.resources)  # a GPU for f^e's Monte Carlo
log = job.log

train = store.open_store(sm.input.train, "training set", require=("x",))
grid = process.TimeGrid.from_settings(p.time)
blur = p.get("blur", 0.0)  # σ_s of a smoothed baseline's theory (rule theory_baseline)
baseline = w.get("baseline")
seed = job_seed("theory", w.dataset, w.d, w.n, w.seed, *([baseline] if baseline else []))
bar = progress_bar(len(grid.saved) * p.entropy_samples, "f^e Monte Carlo samples", sm.log[0])
with Timer(log, f"theory and f^e, job seed {seed}"):
    ds = theory_store.theory_store(
        train,
        grid.saved_times,
        p.entropy_samples,
        seed,
        job.budget,
        entropy_fraction=p.entropy_collapse_fraction,
        entropy_z=p.entropy_zero_se,
        n_boot=p.bootstrap,
        device=job.device,
        progress=bar.update,
        blur=blur,
    )
bar.close()
ds.attrs.update(cell_of(w))
log.info(
    "Λ = %.4g, t_S = %.4g, t_C = %.4g, t_C from f^e = %.4g ± %.2g",
    ds.Lambda,
    ds.t_S_theory,
    ds.t_C_theory,
    ds.t_C_entropy,
    ds.t_C_entropy_se,
)
store.write(ds, sm.output[0])
