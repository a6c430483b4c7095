"""The `models:` entry tests train with: one place, overridden per test."""


def model_cfg(**kw):
    cfg = dict(
        arch="mlp",
        width=128,
        depth=3,
        embedding=32,
        steps=1000,
        batch_size=256,
        lr=2e-3,
        weight_decay=0.0,
        warmup=100,
        ema=0.995,
        grad_clip=1.0,
        checkpoints=4,
        log_every=50,
        compile="auto",
    )
    cfg.update(kw)
    return cfg
