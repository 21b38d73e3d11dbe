"""How the bundled recipe's fine-tuning settings were chosen (without the 80 real validation galaxies).

Run after the recipe has built its simulated store and pretrained network::

    python benchmarks/finetune_selection.py STORE.h5 PRETRAINED.pt \\
        '[{"name": "frozen_bn_replay2560_e10", "freeze_batchnorm": true, "replay": 2560, "epochs": 10}]'

Each configuration fine-tunes the pretrained network on 256 of the 320 real
training JPEGs (early stopping on the other 64, held out with seed 7) plus
simulated replay, and prints JSON lines with the RMSE, without test-time
augmentation, on the simulated validation split and on the 64 held-out real
galaxies, and for weights interpolated between pretrained and fine-tuned
(WiSE-FT). Configuration keys: ``name``, ``real_repeat``, ``replay`` and any
field of `astro_metallicity.train.TrainingConfig`. The real JPEGs are read from
``../shared/data/sdss-gri-jpeg-400`` (or ``ASTRO_METALLICITY_SHARED_DATA``).
"""

import copy
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np

_RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "bundled.py"


def _recipe():
    """The bundled-model recipe (a script of the source tree, not an installed module)."""
    spec = importlib.util.spec_from_file_location("bundled_recipe", _RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    store, pretrained_path, configs = argv[0], argv[1], json.loads(argv[2])

    import torch

    from astro_metallicity.model import MetallicityModel, load_model
    from astro_metallicity.train import (
        TrainingConfig,
        dataset_from_images,
        read_dataset,
        train_model,
    )
    from astro_metallicity.train._metrics import residual_metrics

    recipe = _recipe()
    torch.set_num_threads(1)
    sim = read_dataset(store)
    sim_train, sim_val, _ = sim.split((0.8, 0.1, 0.1), seed=recipe.SPLIT_SEED)
    real_dir = recipe._default_shared() / "sdss-gri-jpeg-400"
    real = dataset_from_images(real_dir / "images", real_dir / "labels.csv")
    train_ids, _ = recipe.real_split(real.catalog["objID"])  # the 80 validation IDs are not used
    held_ids = np.sort(np.random.default_rng(7).choice(train_ids, 64, replace=False))
    real_fit = recipe._select(real, np.setdiff1d(train_ids, held_ids))
    real_held = recipe._select(real, held_ids)
    pretrained = load_model(pretrained_path, device="cpu")

    def scores(model):
        out = {}
        for name, data in (("sim_val", sim_val), ("held_out_real", real_held)):
            pred = model.predict(data.images, tta=False)["metallicity"]
            out[name] = residual_metrics(data.targets(["metallicity"])[:, 0], pred)["rmse"]
        return out

    print(json.dumps({"name": "pretrained", **scores(pretrained)}), flush=True)
    for cfg in configs:
        cfg = dict(cfg)
        name, repeat, n_replay = cfg.pop("name"), cfg.pop("real_repeat", 2), cfg.pop("replay", 640)
        fit_set, _ = recipe.finetune_set(real_fit, sim_train, real_repeat=repeat, n_replay=n_replay,
                                  seed=0)
        config = TrainingConfig(**{"epochs": 20, "batch_size": 32, "max_lr": 3e-4,
                                   "weight_decay": 0.05, "patience": 20, "seed": 0,
                                   "device": "cpu", **cfg})
        t0 = time.perf_counter()
        tuned = train_model(fit_set, real_held, config, init_from=pretrained).model
        result = {"name": name, "options": cfg, "real_repeat": repeat, "replay": n_replay,
                  **scores(tuned), "seconds": round(time.perf_counter() - t0, 1), "wise": {}}
        tuned_weights = {k: v.clone() for k, v in tuned.network.state_dict().items()}
        for fraction in (0.25, 0.5, 0.75):
            mixed = copy.deepcopy(tuned.network)
            mixed.load_state_dict(recipe.interpolate_weights(pretrained.network.state_dict(),
                                                      tuned_weights, fraction))
            result["wise"][fraction] = scores(MetallicityModel(mixed, tuned.metadata, device="cpu"))
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
