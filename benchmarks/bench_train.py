"""Benchmark of training throughput (images per second) of the metallicity CNN.

Run: ``python benchmarks/bench_train.py [--arch resnet18] [--input-size 64] [--threads 1]
[--device cpu] [--steps 10]``

Times full optimisation steps of `astro_metallicity.train.train_model`'s loop
(augmentation, forward, Gaussian-NLL + MSE loss, backward, AdamW, one-cycle
schedule) on random 128 x 128 uint8 cutouts, and prints images/s as JSON.
"""

import argparse
import json
import time

import numpy as np


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--input-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    import torch
    from astropy.table import Table

    from astro_metallicity.train import LabelledCutouts, TrainingConfig, train_model

    torch.set_num_threads(args.threads)
    n = args.batch_size * args.steps
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 128, 128, 3), dtype=np.uint8)
    catalog = Table({"oh_p50": rng.normal(8.9, 0.2, n), "lgm_tot_p50": rng.normal(10, 0.5, n)})
    data = LabelledCutouts(images, catalog)
    config = TrainingConfig(arch=args.arch, input_size=args.input_size, epochs=1,
                            batch_size=args.batch_size, device=args.device)
    # warm-up epoch (allocations, kernels), then a timed epoch
    train_model(data.subset(np.arange(args.batch_size * 2)), config=config)
    t0 = time.perf_counter()
    result = train_model(data, config=config)
    seconds = time.perf_counter() - t0
    print(json.dumps({
        "benchmark": "training throughput", "arch": args.arch, "input_size": args.input_size,
        "batch_size": args.batch_size, "device": str(result.model.device),
        "threads": args.threads, "images": n, "seconds": round(seconds, 2),
        "images_per_s": round(n / seconds, 1),
        "loop_images_per_s": result.history[0]["images_per_s"],
    }, indent=2))


if __name__ == "__main__":
    main()
