"""astro-metallicity train / evaluate on the command line, and the bundled-model recipe."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from astro_metallicity.train import cli as train_cli
from astro_metallicity.train import read_dataset
from astro_metallicity.train.dataset import _write_dataset

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "bundled.py"


@pytest.fixture(scope="module")
def recipe():
    """The bundled-model recipe, a script of the source tree (not installed): import it by path."""
    if not RECIPE.is_file():
        pytest.skip(f"{RECIPE} is not there (not a source checkout)")
    spec = importlib.util.spec_from_file_location("bundled_recipe", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_and_evaluate_commands(labelled_set, tmp_path):
    main = train_cli.main
    store = _write_dataset(labelled_set, tmp_path / "set.h5")
    out = tmp_path / "model"
    code = main(["train", "--data", str(store), "--output", str(out), "--arch", "tiny",
                 "--input-size", "16", "--epochs", "2", "--batch-size", "16",
                 "--device", "cpu", "--threads", "1"])
    assert code == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["arch"] == "tiny" and meta["weights_dtype"] == "float16"
    assert meta["metrics"]["test"]["cnn"]["n"] == 16  # 10 per cent test split of 160
    assert meta["error_scale"]["metallicity"] > 0
    assert "astro-metallicity train --data" in meta["provenance"]["command"]
    assert (tmp_path / "model_report.json").is_file()
    assert (tmp_path / "model_ckpt" / "last_checkpoint.pt").is_file()

    report_path = tmp_path / "eval.json"
    code = main(["evaluate", "--model", str(out.with_suffix(".pt")), "--data", str(store),
                 "--train", str(store), "--report", str(report_path), "--device", "cpu"])
    assert code == 0
    report = json.loads(report_path.read_text())
    assert report["n"] == len(read_dataset(store))
    assert {"mzr", "image_colours", "gri_photometry", "training_mean"} <= set(report["baselines"])


def test_cli_usage_errors(tmp_path):
    with pytest.raises(SystemExit, match="--output PATH is required"):
        train_cli.train(["--data", "x.h5"])
    for argv in (["--recipe", "bundled"], ["--recipe=bundled", "--device", "cpu"]):
        with pytest.raises(SystemExit, match=r"run `python recipes/crossfit.py --output DIR "
                                             r"--sizes 400 --bundle MODEL_DIR`"):
            train_cli.train(argv)
    with pytest.raises(SystemExit, match="astro-metallicity train: arch must be one of"):
        train_cli.train(["--data", "x.h5", "--output", str(tmp_path / "m"), "--arch", "vgg"])
    with pytest.raises(SystemExit, match="usage"):
        train_cli.main(["fly"])
    with pytest.raises(SystemExit, match="give --data"):
        train_cli._load_data(train_cli._evaluate_parser().parse_args([]))


def test_bundled_real_split_is_fixed(recipe):
    real_split = recipe.real_split
    ids = np.arange(1000, 1400)
    train, val = real_split(ids[::-1])
    assert len(train) == 320 and len(val) == 80
    assert not set(train) & set(val)
    _, val2 = real_split(ids)
    np.testing.assert_array_equal(val, val2)


def test_bundled_recipe_end_to_end_in_miniature(recipe, shared_data, tmp_path):
    """The whole recipe (simulate, build, pretrain, fine-tune, evaluate, write) at toy size."""
    from astro_metallicity.model import load_model

    main = recipe.main
    out = tmp_path / "out"
    work, report_path = out / "work", out / "bundled_report.json"  # the defaults under --output
    args = ["--output", str(out),
            "--real-data", str(shared_data / "sdss-gri-jpeg-400"), "--n-sim", "400",
            "--min-sim", "300", "--n-fresh", "60", "--arch", "tiny", "--input-size", "16",
            "--pretrain-epochs", "1", "--finetune-epochs", "1", "--real-only-epochs", "1",
            "--replay", "32", "--calibration-size", "40", "--device", "cpu",
            "--finetune-interpolation", "0.5"]
    assert main(args) == 0
    report = json.loads(report_path.read_text())
    n = report["sim_data"]
    assert n["n_train"] + n["n_val"] + n["n_test"] == n["n_good_cutouts"] >= 300
    assert report["real_data"]["n_train"] == 320 and report["real_data"]["n_val"] == 80
    assert report["sim_test"]["n"] == n["n_test"]
    assert {"mzr", "gri_photometry"} <= set(report["sim_test"]["rmse_gain_over_baselines"])
    assert report["fresh_sim_sky"]["n"] > 40
    model = load_model(out / "metallicity_resnet18.pt", device="cpu")
    stages = model.metadata["training"]
    assert len(stages) == 2 and stages[1]["freeze_batchnorm"] is True
    assert stages[1]["weight_interpolation"].startswith("0.5 x pretrained + 0.5 x fine-tuned")
    assert model.metadata["provenance"]["real_val_objids"] == report["real_data"]["val_objids"]
    # fine-tuning sits under its pretraining: a new pretraining never reuses it
    store_dir = next(p for p in work.iterdir() if p.is_dir() and p.name.startswith("sim_"))
    pretrain_dir = next(store_dir.glob("pretrain_tiny_16px_e1_*"))
    assert (pretrain_dir / "pretrained_model.pt").is_file()
    assert len(list(pretrain_dir.glob("finetune_*/best.pt"))) == 1


def test_recipe_needs_an_output(recipe, capsys):
    with pytest.raises(SystemExit):
        recipe.main(["--device", "cpu"])
    assert "the following arguments are required: --output" in capsys.readouterr().err


def test_interpolate_weights_by_hand(recipe):
    import torch

    interpolate_weights = recipe.interpolate_weights
    start = {"w": torch.tensor([0.0, 2.0]), "n": torch.tensor(1)}
    end = {"w": torch.tensor([4.0, 6.0]), "n": torch.tensor(7)}
    mixed = interpolate_weights(start, end, 0.25)
    torch.testing.assert_close(mixed["w"], torch.tensor([1.0, 3.0]))
    assert int(mixed["n"]) == 7  # integer buffers come from the fine-tuned end


def test_train_command_with_domain_images(labelled_set, tmp_path):
    from PIL import Image

    store = _write_dataset(labelled_set.subset(np.arange(64)), tmp_path / "set.h5")
    folder = tmp_path / "real"
    folder.mkdir()
    for k, image in enumerate(labelled_set.images[64:76]):
        Image.fromarray(image).save(folder / f"{k}.png")
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "model"
    common = ["train", "--data", str(store), "--arch", "tiny", "--input-size", "16",
              "--epochs", "1", "--batch-size", "16", "--device", "cpu", "--threads", "1"]
    assert train_cli.main([*common, "--output", str(out), "--domain-images", str(folder),
                           "--domain-weight", "0.5"]) == 0
    stage = json.loads(out.with_suffix(".json").read_text())["training"][-1]
    assert stage["domain_weight"] == 0.5 and stage["n_domain"] == 12
    with pytest.raises(SystemExit, match="is not a folder"):
        train_cli.main([*common, "--output", str(out), "--domain-images", str(tmp_path / "no")])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit, match="holds no .jpg, .jpeg or .png file"):
        train_cli.main([*common, "--output", str(out), "--domain-images", str(empty)])
    small = tmp_path / "small"
    small.mkdir()
    Image.fromarray(labelled_set.images[0][:8, :8]).save(small / "a.png")
    with pytest.raises(SystemExit, match=r"images of shape \(8, 8, 3\), the training cutouts "
                                         r"are \(24, 24, 3\)"):
        train_cli.main([*common, "--output", str(tmp_path / "m2"), "--domain-images", str(small)])
    with pytest.raises(SystemExit, match="--domain-weight needs --domain-images DIR"):
        train_cli.main([*common, "--output", str(out), "--domain-weight", "2"])
    # the default weight with a folder is 1
    assert train_cli.main([*common, "--output", str(tmp_path / "m3"),
                           "--domain-images", str(folder)]) == 0
    stage = json.loads((tmp_path / "m3.json").read_text())["training"][-1]
    assert stage["domain_weight"] == 1.0
