"""Check of the GPU code path of training and prediction, with throughput figures.

Run on a machine with a CUDA GPU: ``python benchmarks/check_cuda_training.py``

The default test suite runs on CPU only (CI has no GPU), so the parts of
`astro_metallicity.train.train_model` and `astro_metallicity.model` that only
run on CUDA (mixed precision with a gradient scaler, channels-last layout,
pinned-memory loading) are checked here, on a synthetic task with a known
answer: galaxies are Gaussian blobs whose *g - r* colour is a linear function
of the label, so a network that learns must reach a small error. The script
prints JSON and exits non-zero when a check fails:

* training on CUDA lowers the loss, and the validation RMSE ends far below the
  label scatter;
* an interrupted run (``stop_after``) resumed from its checkpoint gives the same
  weights as an uninterrupted one (up to GPU non-determinism);
* fine-tuning options (``backbone_lr_factor``, ``freeze_batchnorm``,
  ``anchor_strength``) run on CUDA;
* the model's predictions on CUDA (float16 autocast) agree with the same model's
  predictions on CPU (float32);
* training and inference throughput (images/s) of the ResNet-18 at 64 px.
"""

import argparse
import json
import sys
import tempfile
import time

import numpy as np


def synthetic_cutouts(n, seed):
    """Blobs whose colour encodes the label: ``metallicity = 8.9 + 0.2 * z``."""
    from astropy.table import Table

    from astro_metallicity.train import LabelledCutouts

    rng = np.random.default_rng(seed)
    z = rng.normal(size=n)
    yy, xx = np.mgrid[:128, :128] - 63.5
    radius = rng.uniform(6, 14, n)[:, None, None]
    blob = np.exp(-0.5 * (xx**2 + yy**2)[None] / radius**2)
    colour = 0.5 + 0.15 * z
    images = np.empty((n, 128, 128, 3), dtype=np.uint8)
    for band, weight in enumerate((colour, np.full(n, 0.6), 1.0 - 0.5 * colour)):
        frame = 200 * weight[:, None, None] * blob + rng.normal(8, 2, (n, 128, 128))
        images[..., band] = np.clip(frame, 0, 255).astype(np.uint8)
    catalog = Table({"oh_p50": 8.9 + 0.2 * z, "lgm_tot_p50": 10 + 0.5 * z})
    return LabelledCutouts(images, catalog)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-train", type=int, default=4096)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--num-workers", type=int, default=4, help="DataLoader worker processes")
    p.add_argument("--device", default="cuda",
                   help="'cpu' runs the same checks on CPU (a quick smoke test of this script)")
    args = p.parse_args(argv)

    import torch

    from astro_metallicity.model import load_model, save_model
    from astro_metallicity.train import TrainingConfig, train_model

    device = args.device
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    if device.startswith("cuda") and not torch.cuda.is_available():
        print(json.dumps({"skipped": "no CUDA device"}))
        return 0
    checks, figures = {}, {"device": torch.cuda.get_device_name(0) if device != "cpu" else "cpu",
                           "torch": torch.__version__}
    train = synthetic_cutouts(args.n_train, seed=1)
    val = synthetic_cutouts(512, seed=2)
    config = TrainingConfig(arch="resnet18", input_size=64, epochs=args.epochs,
                            batch_size=args.batch_size, max_lr=2e-3, seed=0, device=device,
                            num_workers=args.num_workers)

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        full = train_model(train, val, config, checkpoint_dir=f"{tmp}/full")
        figures["train_seconds"] = round(time.perf_counter() - t0, 2)
        history = full.history
        figures["history"] = [{k: round(v, 4) for k, v in h.items()
                               if k in ("train_loss", "val_metallicity_rmse", "images_per_s")}
                              for h in history]
        checks["loss_falls"] = history[-1]["train_loss"] < history[0]["train_loss"]
        checks["val_rmse_below_half_scatter"] = (
            min(h["val_metallicity_rmse"] for h in history) < 0.1)

        part = train_model(train, val, config, checkpoint_dir=f"{tmp}/resumed", stop_after=2)
        resumed = train_model(train, val, config, checkpoint_dir=f"{tmp}/resumed")
        checks["interrupted_run_incomplete"] = not part.completed
        a = full.model.predict(val.images, tta=False)["metallicity"]
        b = resumed.model.predict(val.images, tta=False)["metallicity"]
        figures["resume_max_abs_diff_dex"] = float(np.max(np.abs(a - b)))
        # cuDNN kernels are not bitwise deterministic; the runs agree to well below the error
        checks["resume_matches_uninterrupted"] = figures["resume_max_abs_diff_dex"] < 0.05

        fine_tuning = TrainingConfig(epochs=2, batch_size=64, max_lr=3e-4, device=device,
                                     backbone_lr_factor=0.1, freeze_batchnorm=True,
                                     anchor_strength=5.0)
        fine = train_model(val, val, fine_tuning, init_from=full.model)
        checks["finetune_options_run"] = np.isfinite(fine.history[-1]["train_loss"])

        path = save_model(full.model.network, full.model.metadata, f"{tmp}/model", half=False)
        gpu_model = load_model(path, device=device)
        gpu = gpu_model.predict(val.images)["metallicity"]
        cpu = load_model(path, device="cpu").predict(val.images)["metallicity"]
        figures["cuda_vs_cpu_max_abs_diff_dex"] = float(np.max(np.abs(gpu - cpu)))
        checks["cuda_matches_cpu"] = figures["cuda_vs_cpu_max_abs_diff_dex"] < 0.01

        images = synthetic_cutouts(4096, seed=3).images
        for tta in (False, True):
            gpu_model.predict(images[:256], tta=tta)
            sync()
            t0 = time.perf_counter()
            gpu_model.predict(images, batch_size=512, tta=tta)
            sync()
            figures[f"inference_images_per_s_tta_{tta}"] = round(
                len(images) / (time.perf_counter() - t0), 1)
    figures["train_images_per_s_last_epoch"] = history[-1]["images_per_s"]
    if device != "cpu":
        figures["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    checks = {k: bool(v) for k, v in checks.items()}
    print(json.dumps({"checks": checks, "figures": figures}, indent=2))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
