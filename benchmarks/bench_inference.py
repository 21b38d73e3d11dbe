"""Benchmark of inference throughput of the metallicity CNN (cutouts per second).

Run: ``python benchmarks/bench_inference.py [--model PATH] [--threads 1] [--device cpu]
[--n 512]``

Uses the bundled model (or ``--model``; an untrained ResNet-18 if neither
exists) and times `MetallicityModel.predict` on random 128 x 128 cutouts with
and without the 8-fold dihedral test-time augmentation. Prints JSON.
"""

import argparse
import json
import tempfile
import time

import numpy as np


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None)
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    import torch

    from astro_metallicity.model import _save_untrained_model as save_untrained_model
    from astro_metallicity.model import bundled_model_path, load_model

    torch.set_num_threads(args.threads)
    path, note = args.model, "given"
    if path is None and bundled_model_path().is_file():
        path, note = bundled_model_path(), "bundled"
    tmp = None
    if path is None:
        tmp = tempfile.TemporaryDirectory()
        path = save_untrained_model(f"{tmp.name}/r18", arch="resnet18", input_size=64)
        note = "untrained resnet18 (no bundled model yet)"
    model = load_model(path, device=args.device)
    images = np.random.default_rng(0).integers(0, 256, (args.n, 128, 128, 3), dtype=np.uint8)
    model.predict(images[: args.batch_size], batch_size=args.batch_size)  # warm-up
    out = {"benchmark": "inference throughput", "model": note, "arch": model.metadata["arch"],
           "input_size": model.input_size, "device": str(model.device), "threads": args.threads,
           "n": args.n}
    for tta in (True, False):
        t0 = time.perf_counter()
        model.predict(images, batch_size=args.batch_size, tta=tta)
        seconds = time.perf_counter() - t0
        out[f"cutouts_per_s_{'tta8' if tta else 'no_tta'}"] = round(args.n / seconds, 1)
    print(json.dumps(out, indent=2))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
