"""train_model and TrainingConfig: loss falls, checkpoint/resume, fine-tuning, augmentation."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from astro_metallicity._network import dihedral_views
from astro_metallicity.model import load_model
from astro_metallicity.train import TrainingConfig, train_model
from astro_metallicity.train._metrics import residual_metrics
from astro_metallicity.train.training import _RandomRot90, _training_transform

KW = {"arch": "tiny", "input_size": 16, "batch_size": 32, "max_lr": 1e-2, "device": "cpu"}


def test_loss_falls_and_model_learns(labelled_set):
    train, val = labelled_set.subset(np.arange(120)), labelled_set.subset(np.arange(120, 160))
    result = train_model(train, val, epochs=6, seed=1, **dict(KW, batch_size=16))
    losses = [h["train_loss"] for h in result.history]
    assert len(losses) == 6
    assert losses[-1] < losses[0] - 0.5  # (the NLL part of the loss may go negative)
    truth = val.targets(["metallicity"])[:, 0]
    pred = result.model.predict(val.images)["metallicity"]
    # better than predicting the mean
    assert residual_metrics(truth, pred)["rmse"] < 0.8 * np.std(truth)
    assert result.history[-1]["val_metallicity_rmse"] > 0
    meta = result.model.metadata
    assert meta["outputs"] == ["metallicity", "log_mstar"]
    assert meta["label_mean"]["metallicity"] == pytest.approx(np.mean(truth), abs=0.1)
    assert meta["training"][0]["n_train"] == 120
    assert meta["cutout_size"] == 24 and meta["input_size"] == 16


def test_checkpoint_resume_matches_uninterrupted_run(labelled_set, tmp_path):
    train, val = labelled_set.subset(np.arange(96)), labelled_set.subset(np.arange(96, 128))
    full = train_model(train, val, epochs=3, seed=2, patience=10,
                       checkpoint_dir=tmp_path / "a", **KW)
    part = train_model(train, val, epochs=3, seed=2, patience=10, stop_after=1,
                       checkpoint_dir=tmp_path / "b", **KW)
    assert not part.completed and len(part.history) == 1
    assert (tmp_path / "b" / "last_checkpoint.pt").is_file()
    assert not (tmp_path / "b" / "best.pt").exists()
    resumed = train_model(train, val, epochs=3, seed=2, patience=10,
                          checkpoint_dir=tmp_path / "b", **KW)
    assert resumed.completed and len(resumed.history) == 3
    for a, b in zip(full.history, resumed.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    sa, sb = full.model.network.state_dict(), resumed.model.network.state_dict()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=1e-5, atol=1e-6)
    # the best model is saved in the package format and loads
    best = load_model(tmp_path / "b" / "best.pt", device="cpu")
    np.testing.assert_allclose(best.predict(val.images)["metallicity"],
                               resumed.model.predict(val.images)["metallicity"], atol=1e-5)
    # a finished run resumes to the same result without training again
    again = train_model(train, val, epochs=3, seed=2, patience=10,
                        checkpoint_dir=tmp_path / "b", **KW)
    assert len(again.history) == 3 and again.best_epoch == resumed.best_epoch


def test_resume_refuses_other_run(labelled_set, tmp_path):
    train = labelled_set.subset(np.arange(64))
    train_model(train, epochs=1, seed=0, checkpoint_dir=tmp_path, **KW)
    with pytest.raises(ValueError, match="belongs to another run"):
        train_model(train, epochs=2, seed=0, checkpoint_dir=tmp_path, **KW)
    # resume=False starts afresh
    result = train_model(train, epochs=2, seed=0, checkpoint_dir=tmp_path, resume=False, **KW)
    assert len(result.history) == 2


def test_early_stopping(labelled_set):
    train, val = labelled_set.subset(np.arange(64)), labelled_set.subset(np.arange(64, 96))
    # a learning rate this large diverges, so validation stops improving
    result = train_model(train, val, epochs=8, seed=0, patience=1, arch="tiny", input_size=16,
                         batch_size=32, max_lr=5.0, device="cpu")
    if result.stopped_early:
        assert len(result.history) < 8
        assert result.best_epoch == int(np.argmin([h["val_metallicity_rmse"]
                                                   for h in result.history]))
    else:  # pragma: no cover - extremely unlikely with this learning rate
        pytest.fail("training with max_lr=5 never stopped early")


def test_fine_tune_with_missing_labels(labelled_set, tmp_path):
    train = labelled_set.subset(np.arange(64))
    pre = train_model(train, epochs=1, seed=0, checkpoint_dir=tmp_path / "pre", **KW)
    real = labelled_set.subset(np.arange(64, 128))
    real.catalog.remove_column("lgm_tot_p50")  # like the real JPEG set: metallicity only
    assert np.all(np.isnan(real.targets(["log_mstar"])))
    tuned = train_model(real, epochs=2, seed=0, init_from=tmp_path / "pre" / "best.pt",
                        arch="tiny", batch_size=32, max_lr=1e-3,
                        device="cpu", metadata={"provenance": {"stage": "fine-tune"}})
    meta = tuned.model.metadata
    assert meta["arch"] == "tiny" and meta["input_size"] == 16  # kept from the pretrained model
    assert meta["outputs"] == ["metallicity", "log_mstar"]
    assert meta["label_mean"] == pre.model.metadata["label_mean"]
    assert len(meta["training"]) == 2 and meta["training"][1]["n_train"] == 64
    assert meta["provenance"]["stage"] == "fine-tune"
    assert all(np.isfinite(h["train_loss"]) for h in tuned.history)
    json.dumps(meta)  # metadata stays JSON-serialisable


def test_training_transform_is_dihedral_without_zoom():
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)
    views = {tuple(v.flatten().tolist()) for v in dihedral_views(image[None])}
    transform = _training_transform(16, zoom=1.0)
    seen = set()
    for _ in range(60):
        out = transform(image)
        assert out.shape == (3, 16, 16) and out.dtype == torch.uint8
        seen.add(tuple(out[None].flatten().tolist()))
    assert seen <= views and len(seen) == 8
    zoomed = _training_transform(8, zoom=1.1)(image)
    assert zoomed.shape == (3, 8, 8)
    with pytest.raises(ValueError, match="zoom must be >= 1"):
        _training_transform(8, zoom=0.5)
    assert repr(_RandomRot90()) == "_RandomRot90()"


def test_train_model_argument_errors(labelled_set):
    with pytest.raises(ValueError, match="loss must be"):
        train_model(labelled_set, loss="l1", **KW)
    with pytest.raises(ValueError, match="at least one cutout"):
        train_model(labelled_set.subset(np.array([], dtype=int)), **KW)
    with pytest.raises(TypeError, match="train must be a LabelledCutouts"):
        train_model(42, **KW)
    with pytest.raises(ValueError, match="epochs and batch_size must be positive"):
        train_model(labelled_set, epochs=0, **KW)
    with pytest.raises(ValueError, match="backbone_lr_factor must be in"):
        train_model(labelled_set, backbone_lr_factor=0, **KW)
    with pytest.raises(ValueError, match="anchor_strength fine-tune a pretrained network and "
                                         "need init_from"):
        train_model(labelled_set, anchor_strength=1.0, **KW)
    with pytest.raises(ValueError, match="^freeze_batchnorm, backbone_lr_factor fine-tune"):
        train_model(labelled_set, freeze_batchnorm=True, backbone_lr_factor=0.1, **KW)
    with pytest.raises(TypeError, match=r"unknown settings \['epoch'\]; the settings are the "
                                        "fields of TrainingConfig"):
        train_model(labelled_set, epoch=3, **KW)
    with pytest.raises(TypeError, match="config must be a TrainingConfig, got dict"):
        train_model(labelled_set, config={"epochs": 3})
    with pytest.raises(TypeError, match=r"val is a TrainingConfig; pass it third or by name"):
        train_model(labelled_set, TrainingConfig())


@pytest.mark.parametrize(("settings", "message"), [
    ({"loss": "l1"}, "loss must be 'mse\\+nll' or 'nll', got 'l1'"),
    ({"batch_size": 0}, "epochs and batch_size must be positive, got 10 and 0"),
    ({"patience": -1}, "patience and num_workers must be >= 0, got -1 and 0"),
    ({"max_lr": 0}, "max_lr must be > 0 and weight_decay >= 0, got 0.0 and 0.05"),
    ({"backbone_lr_factor": 1.5}, "backbone_lr_factor must be in \\(0, 1\\]"),
    ({"zoom": 0.9}, "zoom must be >= 1, got 0.9"),
    ({"pct_start": 1.0}, "pct_start must be between 0 and 1, got 1.0"),
    ({"arch": "vgg11"}, "arch must be one of \\('tiny', 'resnet18', 'resnet34'\\), got 'vgg11'"),
    ({"input_size": 0}, "input_size must be a positive number of pixels, got 0"),
    ({"outputs": ["log_mstar"]}, "outputs must include 'metallicity'"),
    ({"outputs": ["metallicity", "redshift"]}, "outputs must include 'metallicity' and be among"),
])
def test_training_config_refuses_bad_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        TrainingConfig(**settings)


def test_config_changed_after_creation_is_checked_again(labelled_set):
    config = TrainingConfig(arch="tiny", input_size=16)
    config.loss = "l1"
    with pytest.raises(ValueError, match="loss must be 'mse\\+nll' or 'nll', got 'l1'"):
        train_model(labelled_set, None, config)
    config.loss, config.epochs = "nll", -3
    with pytest.raises(ValueError, match="epochs and batch_size must be positive, got -3"):
        train_model(labelled_set, None, config)


def test_training_config_normalises_types():
    config = TrainingConfig(epochs=3.0, outputs="metallicity", input_size="32")
    assert config.epochs == 3 and isinstance(config.epochs, int)
    assert config.outputs == ("metallicity",) and config.input_size == 32
    assert TrainingConfig().arch is None  # resolved per run: resnet18, or init_from's


def test_config_object_and_keywords_train_the_same_weights(labelled_set):
    train = labelled_set.subset(np.arange(64))
    config = TrainingConfig(arch="tiny", input_size=16, batch_size=32, max_lr=1e-2,
                            device="cpu", epochs=2, seed=4)
    a = train_model(train, config=config).model.network.state_dict()
    b = train_model(train, **KW, epochs=2, seed=4).model.network.state_dict()
    # keywords override the fields of a given config
    c = train_model(train, None, TrainingConfig(seed=99, epochs=7), **KW, epochs=2,
                    seed=4).model.network.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
        torch.testing.assert_close(a[key], c[key], rtol=0, atol=0)


def test_init_from_refuses_other_network_settings(labelled_set, tmp_path):
    pre = train_model(labelled_set.subset(np.arange(32)), epochs=1, **KW).model
    real = labelled_set.subset(np.arange(32, 64))
    with pytest.raises(ValueError, match=r"settings ask for arch='resnet18', input_size=99 "
                                         r"where the starting model has arch='tiny', "
                                         r"input_size=16; leave \['arch', 'input_size'\] unset"):
        train_model(real, init_from=pre, arch="resnet18", input_size=99, epochs=1, device="cpu")
    with pytest.raises(ValueError, match=r"outputs=\('metallicity',\) where the starting model "
                                         r"has outputs=\('metallicity', 'log_mstar'\)"):
        train_model(real, init_from=pre, outputs=["metallicity"], epochs=1, device="cpu")
    # the starting model's own values are no conflict
    tuned = train_model(real, init_from=pre, arch="tiny", input_size=16,
                        outputs=("metallicity", "log_mstar"), epochs=1, device="cpu")
    assert tuned.model.metadata["input_size"] == 16


def _backbone_distance(network, reference):
    """Summed squared distance of all weights but the output layer's (the tiny net's '10.')."""
    ref = reference.state_dict()
    return sum(float(((p.detach() - ref[n]) ** 2).sum()) for n, p in network.named_parameters()
               if not n.startswith("10."))


def test_fine_tune_options_keep_pretrained_features(labelled_set):
    pre = train_model(labelled_set.subset(np.arange(64)), epochs=1, seed=0, **KW).model
    real = labelled_set.subset(np.arange(64, 160))
    tune = {"epochs": 2, "seed": 0, "init_from": pre, "batch_size": 32, "max_lr": 1e-2,
            "device": "cpu"}
    plain = train_model(real, **tune).model
    slow = train_model(real, backbone_lr_factor=0.01, **tune).model
    # lr * anchor_strength = 1 at the peak: the backbone snaps back to the pretrained weights
    anchored = train_model(real, anchor_strength=100.0, **tune).model
    moved = _backbone_distance(plain.network, pre.network)
    assert moved > 0
    assert _backbone_distance(slow.network, pre.network) < 0.05 * moved
    assert _backbone_distance(anchored.network, pre.network) < 0.2 * moved
    # the output layer still learns at the full rate
    assert not torch.equal(slow.network[10].weight, pre.network[10].weight)

    frozen = train_model(real, freeze_batchnorm=True, **tune).model
    for name in ("1.running_mean", "1.running_var", "4.running_mean"):
        torch.testing.assert_close(frozen.network.state_dict()[name], pre.network.state_dict()[name])
        assert not torch.equal(plain.network.state_dict()[name], pre.network.state_dict()[name])
    stage = anchored.metadata["training"][-1]
    assert stage["anchor_strength"] == 100.0 and stage["backbone_lr_factor"] == 1.0
    assert frozen.metadata["training"][-1]["freeze_batchnorm"] is True


def test_optimizer_state_regrouping():
    """Checkpoints with one parameter group resume into two (backbone, head) and back."""
    from astro_metallicity.train.training import _regroup

    one = {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0, 1, 2, 3, 4]}]}
    two = _regroup(one, 2)
    assert [g["params"] for g in two["param_groups"]] == [[0, 1, 2], [3, 4]]
    back = _regroup(two, 1)
    assert back["param_groups"][0]["params"] == [0, 1, 2, 3, 4]
    assert _regroup(one, 1) is one
