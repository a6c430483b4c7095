"""Rule `metrics`: every per-run metric (speciation, collapse, memorisation) of one run."""

import torch

from diffregimes import judge, run_metrics, store
from diffregimes.joblog import Timer, start_log
from diffregimes.seeds import job_seed

sm = snakemake  # noqa: F821 (injected by Snakemake)
w = sm.wildcards
log = start_log(sm.log[0], "metrics")
torch.set_num_threads(sm.threads)

traj = store.open_store(sm.input.trajectories)
train = store.open_store(sm.input.train)
theory = store.open_store(sm.input.theory)
seed = job_seed("metrics", w.dataset, w.d, w.n, w.seed, w.score)
judged = {}
if sm.input.get("judge"):  # images: the class judge labels the clone end points
    net, accuracy, info = judge.load_judge(sm.input.judge[0])
    if net is None:
        judged = {"judge_reason": info["no_classes"]}
    else:
        judged = {
            "judge": net,
            "judge_accuracy": accuracy,
            "judge_confusion": info.get("confusion"),
        }
        log.info("class judge: held-out accuracy %.4f", accuracy)
with Timer(log, f"metrics, job seed {seed}"):
    cfg = {**sm.params.metrics, "memory_budget_mb": sm.resources.budget_mb}
    probes = store.open_store(sm.input.probes)
    ds = run_metrics.run_metrics(traj, train, theory, cfg, seed, probes_ds=probes, **judged)
if sm.input.get("training"):  # a learned score: add its training-time axis
    ds = run_metrics.add_training_axis(ds, store.open_store(sm.input.training[0]))
log.info(
    "t_S measured %.4g (theory %.4g, probes %.4g), t_C measured %.4g (theory %.4g, probes %.4g), "
    "f_mem %.3f",
    ds.t_S_measured,
    ds.t_S_theory,
    ds.t_S_probe,
    ds.t_C_measured,
    ds.t_C_theory,
    ds.t_C_probe,
    ds.f_mem,
)
store.write(ds, sm.output[0])
