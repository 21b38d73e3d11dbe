"""Tests of astro_metallicity.model (saving, loading, predicting) and the network it builds."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from astro_metallicity import conf
from astro_metallicity._network import build_network, default_metadata, dihedral_views
from astro_metallicity.model import (
    MetallicityModel,
    _save_untrained_model,
    load_model,
    save_model,
)


@pytest.fixture
def tiny_path(tmp_path):
    return _save_untrained_model(tmp_path / "tiny", arch="tiny", input_size=32, seed=1)


@pytest.fixture
def images():
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, size=(5, 40, 40, 3), dtype=np.uint8)


def test_build_network_output_shape():
    for arch, size in (("tiny", 32), ("resnet18", 64)):
        net = build_network(arch, n_outputs=2).eval()
        with torch.no_grad():
            out = net(torch.zeros(3, 3, size, size))
        assert out.shape == (3, 4)


def test_build_network_rejects_unknown_arch():
    with pytest.raises(ValueError, match="arch must be one of"):
        build_network("vgg11")
    with pytest.raises(ValueError, match="n_outputs must be a positive"):
        build_network("tiny", n_outputs=0)


def test_save_load_roundtrip_predictions_match(tmp_path, images):
    torch.manual_seed(0)
    net = build_network("tiny", n_outputs=1)
    meta = default_metadata(arch="tiny", outputs=["metallicity"], input_size=32,
                            label_mean={"metallicity": 9.0}, label_std={"metallicity": 0.3})
    pt = save_model(net, meta, tmp_path / "m.json", half=False)
    assert pt.name == "m.pt" and (tmp_path / "m.json").is_file()
    model = load_model(pt, device="cpu")
    assert model.outputs == ["metallicity"]
    assert model.metadata["label_mean"]["metallicity"] == 9.0
    # Hand computation of the un-augmented prediction from the saved network.
    net.eval()
    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
        x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", antialias=True,
                                            align_corners=False)
        x = (x - 0.5) / 0.25
        raw = net(x).numpy()
    result = model.predict(images, tta=False)
    np.testing.assert_allclose(result["metallicity"], raw[:, 0] * 0.3 + 9.0, rtol=1e-5)
    np.testing.assert_allclose(result["metallicity_err"], np.exp(raw[:, 1] / 2) * 0.3, rtol=1e-4)
    assert "log_mstar" not in result


def test_inference_network_folds_batchnorm_and_follows_weight_updates(images):
    """Prediction runs a copy of the network with BatchNorm folded into the convolutions:
    no BatchNorm left, outputs as the network's own to float rounding, and an in-place
    change of the weights (a training step) is seen by the next prediction."""
    torch.manual_seed(0)
    net = build_network("resnet18", n_outputs=1).eval()
    with torch.no_grad():  # BatchNorm statistics away from the identity, as after training
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    meta = default_metadata(arch="resnet18", outputs=["metallicity"], input_size=64,
                            label_mean={"metallicity": 9.0}, label_std={"metallicity": 0.3})
    model = MetallicityModel(net, meta, device="cpu")
    fused = model._inference_network()
    assert fused is not net
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        np.testing.assert_allclose(fused(x).numpy(), net(x).numpy(), rtol=0, atol=1e-4)
    before = model.predict(images, tta=False)["metallicity"]
    with torch.no_grad():
        net.fc.bias.add_(1.0)
    after = model.predict(images, tta=False)["metallicity"]
    assert model._inference_network() is not fused
    np.testing.assert_allclose(after - before, 0.3, atol=1e-4)  # the bias, times label_std


def test_half_storage_is_smaller_and_close(tmp_path, images):
    net = build_network("tiny", n_outputs=2)
    meta = default_metadata(arch="tiny", input_size=32)
    full = save_model(net, meta, tmp_path / "full", half=False)
    half = save_model(net, meta, tmp_path / "half", half=True)
    assert half.stat().st_size < full.stat().st_size
    assert json.loads((tmp_path / "half.json").read_text())["weights_dtype"] == "float16"
    a = load_model(full, device="cpu").predict(images)
    b = load_model(half, device="cpu").predict(images)
    np.testing.assert_allclose(a["metallicity"], b["metallicity"], atol=5e-3)


def test_tta_shape_and_dihedral_invariance(tiny_path, images):
    model = load_model(tiny_path, device="cpu")
    result = model.predict(images, batch_size=2)
    assert set(result) == {"metallicity", "metallicity_err", "log_mstar", "log_mstar_err"}
    for value in result.values():
        assert value.shape == (5,) and value.dtype == np.float64
        assert np.all(np.isfinite(value))
    assert np.all(result["metallicity_err"] > 0)
    # The 8-view average is invariant under any dihedral transform of the input.
    for transformed in (np.rot90(images, 1, axes=(1, 2)), images[:, :, ::-1], images[:, ::-1]):
        other = model.predict(np.ascontiguousarray(transformed))
        np.testing.assert_allclose(other["metallicity"], result["metallicity"], rtol=0, atol=1e-6)
        np.testing.assert_allclose(other["metallicity_err"], result["metallicity_err"], rtol=1e-5)
    # Without TTA the prediction is not invariant (the network itself is not).
    plain = model.predict(images, tta=False)["metallicity"]
    rotated = model.predict(np.ascontiguousarray(np.rot90(images, 1, axes=(1, 2))),
                            tta=False)["metallicity"]
    assert np.abs(plain - rotated).max() > 1e-7
    # A single (H, W, 3) image works and batching does not change results.
    single = model.predict(images[2])
    np.testing.assert_allclose(single["metallicity"], result["metallicity"][2:3], atol=1e-6)


def test_tta_error_includes_view_spread(tiny_path, images):
    model = load_model(tiny_path, device="cpu")
    x = torch.rand(2, 3, 8, 8)
    views = dihedral_views(x)
    assert len(views) == 8
    assert len({tuple(v.flatten().tolist()) for v in views}) == 8
    result = model.predict(images)
    # error_scale multiplies the error linearly
    model.metadata["error_scale"]["metallicity"] = 2.0
    doubled = model.predict(images)
    np.testing.assert_allclose(doubled["metallicity_err"], 2 * result["metallicity_err"])
    np.testing.assert_allclose(doubled["metallicity"], result["metallicity"])


def test_predict_rejects_bad_images(tiny_path):
    model = load_model(tiny_path, device="cpu")
    with pytest.raises(ValueError, match="uint8"):
        model.predict(np.zeros((2, 32, 32, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        model.predict(np.zeros((2, 32, 32), dtype=np.uint8))
    with pytest.raises(ValueError, match="batch_size"):
        model.predict(np.zeros((2, 32, 32, 3), dtype=np.uint8), batch_size=0)


def test_load_model_errors(tmp_path, tiny_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_model(tmp_path / "nothing.pt")
    # weights without metadata
    lonely = tmp_path / "lonely.pt"
    lonely.write_bytes(tiny_path.read_bytes())
    with pytest.raises(FileNotFoundError, match="metadata .* not found"):
        load_model(lonely)
    # metadata missing keys
    meta_path = tiny_path.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    broken = dict(meta)
    del broken["label_mean"]
    bad = tmp_path / "bad"
    bad.with_suffix(".pt").write_bytes(tiny_path.read_bytes())
    bad.with_suffix(".json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="lacks.*label_mean"):
        load_model(bad.with_suffix(".pt"))
    # wrong format version
    bad.with_suffix(".json").write_text(json.dumps(dict(meta, format_version=99)))
    with pytest.raises(ValueError, match="format_version 99"):
        load_model(bad.with_suffix(".pt"))
    # metadata/weights mismatch
    bad.with_suffix(".json").write_text(json.dumps(dict(meta, arch="resnet18")))
    with pytest.raises(ValueError, match="do not match arch 'resnet18'"):
        load_model(bad.with_suffix(".pt"))
    # not JSON
    bad.with_suffix(".json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_model(bad.with_suffix(".pt"))
    # a pickled object is refused by weights_only loading
    bad.with_suffix(".json").write_text(json.dumps(meta))
    torch.save({"x": object()}, bad.with_suffix(".pt"))
    with pytest.raises(ValueError, match="could not read model weights"):
        load_model(bad.with_suffix(".pt"))


def test_load_model_default_uses_conf_model_path(tiny_path):
    with conf.set_temp("model_path", str(tiny_path)):
        model = load_model(device="cpu")
    assert isinstance(model, MetallicityModel)
    assert model.path == tiny_path


def test_bundled_model_missing_message(monkeypatch, tmp_path):
    from astro_metallicity import model as model_module

    monkeypatch.setattr(model_module, "bundled_model_path", lambda: tmp_path / "none.pt")
    with pytest.raises(FileNotFoundError, match="bundled model .* is not installed"):
        load_model()


def test_device_resolution(tiny_path):
    with conf.set_temp("device", "cpu"):
        assert load_model(tiny_path).device.type == "cpu"
    with pytest.raises(ValueError, match="not a torch device"):
        load_model(tiny_path, device="toaster")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            load_model(tiny_path, device="cuda")


def test_default_metadata_validation():
    with pytest.raises(ValueError, match="outputs must be"):
        default_metadata(outputs=["redshift"])
    with pytest.raises(ValueError, match="must include 'metallicity'"):
        default_metadata(outputs=["log_mstar"])
    meta = default_metadata(pixel_scale=0.396)
    assert meta["pixel_scale"] == pytest.approx(0.396)
    from astro_metallicity.preprocess import SDSS_JPEG_STRETCH

    assert meta["stretch"] == SDSS_JPEG_STRETCH
    with pytest.raises(ValueError, match="metadata lacks"):
        save_model(build_network("tiny"), {"arch": "tiny"}, "unused")


def test_predict_real_jpegs(shared_data, tiny_path):
    from PIL import Image

    folder = shared_data / "sdss-gri-jpeg-400" / "images"
    files = sorted(folder.glob("*.jpg"))[:4]
    images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    assert images.shape == (4, 128, 128, 3)
    result = load_model(tiny_path, device="cpu").predict(images)
    assert np.all(np.isfinite(result["metallicity"]))
    assert np.all(result["metallicity_err"] > 0)
