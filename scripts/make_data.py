"""Rule `data`: the training and held-out sets of one (dataset, d, n, seed) cell."""

from diffregimes import data, images, store
from diffregimes.image_files import IMAGE_KINDS
from diffregimes.joblog import start_log

w, p = snakemake.wildcards, snakemake.params  # noqa: F821 (injected by Snakemake)
log = start_log(snakemake.log[0], "data")  # noqa: F821
spec = p.spec
log.info("making %s (%s): d=%s n=%s seed=%s", w.dataset, spec["kind"], w.d, w.n, w.seed)
if spec["kind"] in IMAGE_KINDS:
    train, test = images.make_image_data(spec, w.dataset, p.side, int(w.n), int(w.seed))
    log.info("%s; source %s", train.attrs["preprocessing"], train.attrs["source"])
    if train.sizes["feature"] != int(w.d):  # npz `channels` declared wrongly in the config
        raise ValueError(
            f"datasets.{w.dataset}.channels: the config gives d={w.d}, but "
            f"{train.attrs['source']} holds {train.attrs['image_shape'][0]}-channel images "
            f"(d={train.sizes['feature']}); fix channels (or remove it) and rerun"
        )
else:
    train, test = data.make_synthetic(spec, w.dataset, int(w.d), int(w.n), int(w.seed))
store.write(train, snakemake.output.train)  # noqa: F821
store.write(test, snakemake.output.test)  # noqa: F821
log.info("wrote %d training and %d held-out points", train.sizes["item"], test.sizes["item"])
