"""Rule `train`: denoising score matching of one model on one training set (resumable)."""

from pathlib import Path

import torch

from diffregimes import nets, store, train
from diffregimes.joblog import Timer, cell_of, progress_bar, start_job
from diffregimes.seeds import job_seed, training_fingerprint

sm = snakemake  # noqa: F821 (injected by Snakemake)
MODEL_CODE = ("train", "nets", "process")
w, p = sm.wildcards, sm.params
job = start_job(sm.log[0], "train", sm.threads, sm.resources)
log, device = job.log, job.device

data = store.open_store(sm.input.train, "training set", require=("x",))
x = torch.as_tensor(data["x"].values, dtype=torch.float32)
seed = job_seed("train", w.dataset, w.d, w.n, w.seed, w.model)
torch.manual_seed(seed)  # network initialisation
shape = data.attrs.get("image_shape")  # images: (channels, side, side) for a U-Net
shape = tuple(int(v) for v in shape) if shape is not None else None
net = nets.build_network(p.model, x.shape[1], shape)
log.info("%s: %d parameters", p.model["arch"], sum(q.numel() for q in net.parameters()))
folder = Path(sm.output.model).parent
bar = progress_bar(p.model["steps"], "training steps", sm.log[0])
# settings, the training data's content and the code that decides the model (this script,
# train, nets, process; not the I/O): a rerun after a change never resumes stale work
code = [f for f in sm.input.code if Path(f).stem in MODEL_CODE]
key = training_fingerprint(p.model, p.time, seed, data["x"].values, code)
with Timer(log, f"training {w.model}, job seed {seed}"):
    result = train.train(
        net, x, p.model, p.time, seed, folder, key, device, progress=lambda k: bar.update(k - bar.n)
    )
bar.close()
# the checkpoints are recorded in the declared model file: training_axis reads them through it
saved = {
    s: train.CHECKPOINT.format(s)
    for s in train.checkpoint_steps(p.model["steps"], p.model["checkpoints"])
}
record = store.checkpoint_record(folder, saved)
nets.save_trained(
    sm.output.model, result["ema"], p.model, x.shape[1], result["step"], shape, record
)
hist = train.history_dataset(result["history"])
hist.attrs.update(cell_of(w), device=str(device), seed_job=seed, settings=p.model)
store.write(hist, sm.output.log_store)
