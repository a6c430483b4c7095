"""Rule `judge`: the class judge (small CNN) of one image dataset at one size, trained on all
its training images and scored on its test split."""

import numpy as np

from diffregimes import images, judge, judge_correction
from diffregimes.device import job_device
from diffregimes.joblog import Timer, start_log
from diffregimes.seeds import job_seed

sm = snakemake  # noqa: F821 (injected by Snakemake)
w, p = sm.wildcards, sm.params
log = start_log(sm.log[0], "judge")
device = job_device(log, sm.threads, sm.resources.get("gpu"))

x_train, y_train, x_test, y_test = images.judge_data(p.spec, w.dataset, p.side)
if np.all(y_train < 0):  # unlabelled images: no classes, φ is undefined
    reason = f"{w.dataset} has no labels (no array y): φ(t) is undefined"
    log.info(reason)
    judge.save_no_classes(sm.output[0], reason)
else:
    seed = job_seed("judge", w.dataset, w.d)
    with Timer(log, f"class judge on {len(y_train)} images, job seed {seed}"):
        net, accuracy, info = judge.train_judge(
            x_train,
            y_train,
            x_test,
            y_test,
            channels=x_train.shape[1],
            side=p.side,
            seed=seed,
            steps=p.judge["steps"],
            batch_size=p.judge["batch_size"],
            lr=p.judge["lr"],
            device=device,
            log=log,
        )
    log.info("held-out accuracy %.4f on %d test images", accuracy, len(y_test))
    if why := judge_correction.correctable(info["confusion"]):  # said here, at training time
        log.warning("this judge's errors cannot be undone in φ (SCIENCE.md §3): %s", why)
    judge.save_judge(sm.output[0], net, accuracy, {**info, "seed_job": seed})
