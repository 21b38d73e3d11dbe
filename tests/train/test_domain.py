"""Domain-adversarial training (train_model(..., domain_images=, domain_weight=))."""

import math

import numpy as np
import pytest

from astro_metallicity.train import TrainingConfig, train_model
from astro_metallicity.train._domain import reversal_scale

from .conftest import make_labelled_set

torch = pytest.importorskip("torch")

KW = {"arch": "tiny", "input_size": 24, "batch_size": 16, "device": "cpu", "zoom": 1.0}


def _patched(images):
    """The same kind of galaxy with a bright square in one corner (a nuisance the labels
    do not depend on, like a star or a sky glow only the target domain has)."""
    out = images.copy()
    out[:, :6, :6, :] = 230
    return out


def _rmse(model, cutouts, images):
    truth = cutouts.targets(["metallicity"])[:, 0]
    return float(np.sqrt(np.mean((model.predict(images)["metallicity"] - truth) ** 2)))


def test_reversal_scale_schedule():
    assert reversal_scale(0.0, 0.7) == 0.0
    assert reversal_scale(1.0, 0.7) == pytest.approx(0.7 * (2 / (1 + math.exp(-10)) - 1))
    values = [reversal_scale(p, 1.0) for p in np.linspace(0, 1, 11)]
    assert all(b > a for a, b in zip(values, values[1:]))
    assert reversal_scale(0.5, 2.0) == pytest.approx(2 * reversal_scale(0.5, 1.0))


def test_gradient_reversal_flips_and_scales():
    from astro_metallicity.train._domain import _reverse_gradient

    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    y = _reverse_gradient()(x, 0.25)
    torch.testing.assert_close(y, x.detach())
    (y * torch.tensor([2.0, 4.0, 8.0])).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([-0.5, -1.0, -2.0]))


def test_domain_adaptation_ignores_a_target_only_nuisance():
    # Trained on clean cutouts only, the network is thrown off by a corner patch that only
    # the unlabelled target images show; trained adversarially against those images it
    # learns features that ignore it and predicts the labelled target set almost as well.
    source = make_labelled_set(160, seed=0)
    target = make_labelled_set(160, seed=1)
    target_images = _patched(target.images)
    plain = train_model(source, None, epochs=15, seed=0, **KW)
    adapted = train_model(source, None, epochs=15, seed=0, domain_weight=0.3,
                          domain_images=target_images, **KW)
    plain_rmse, adapted_rmse = (_rmse(r.model, target, target_images) for r in (plain, adapted))
    assert adapted_rmse < 0.1 and plain_rmse > 3 * adapted_rmse
    assert _rmse(adapted.model, source, source.images) < 0.1  # the task is still learned
    history = adapted.history[-1]
    # balanced over the two domains (16 training + 8 target images a step)
    assert 0 <= history["domain_accuracy"] <= 1 and history["domain_loss"] > 0
    stage = adapted.model.metadata["training"][-1]
    assert stage["domain_weight"] == 0.3 and stage["n_domain"] == 160
    assert "domain_weight" not in plain.model.metadata["training"][-1]


def test_domain_run_resumes_like_an_uninterrupted_one(tmp_path):
    source = make_labelled_set(96, seed=0)
    target = _patched(make_labelled_set(48, seed=1).images)
    settings = dict(epochs=3, seed=1, domain_weight=0.5, domain_images=target, **KW)
    full = train_model(source, None, checkpoint_dir=tmp_path / "a", **settings)
    part = train_model(source, None, checkpoint_dir=tmp_path / "b", stop_after=1, **settings)
    assert not part.completed
    resumed = train_model(source, None, checkpoint_dir=tmp_path / "b", **settings)
    for a, b in zip(full.history, resumed.history, strict=True):
        assert a["domain_loss"] == pytest.approx(b["domain_loss"], rel=1e-5)
    sa, sb = full.model.network.state_dict(), resumed.model.network.state_dict()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=1e-5, atol=1e-6)
    # a plain run cannot resume the adversarial one's checkpoint
    with pytest.raises(ValueError, match="belongs to another run"):
        train_model(source, None, checkpoint_dir=tmp_path / "b", epochs=3, seed=1, **KW)


def test_domain_settings_are_checked():
    source = make_labelled_set(32, seed=0)
    with pytest.raises(ValueError, match="domain_weight must be a finite number >= 0, got -1.0"):
        TrainingConfig(domain_weight=-1)
    with pytest.raises(ValueError, match="needs both domain_images and domain_weight > 0; "
                                         "got no domain images and domain_weight=0.5"):
        train_model(source, None, epochs=1, domain_weight=0.5, **KW)
    with pytest.raises(ValueError, match="got 32 domain images and domain_weight=0.0"):
        train_model(source, None, epochs=1, domain_images=source.images, **KW)
    with pytest.raises(ValueError, match=r"domain_images must be uint8 of shape \(N, 24, 24, 3\)"):
        train_model(source, None, epochs=1, domain_weight=0.5,
                    domain_images=source.images[:, :16, :16], **KW)
    with pytest.raises(ValueError, match="domain_weight must be a finite number >= 0, got inf"):
        TrainingConfig(domain_weight=float("inf"))
    with pytest.raises(ValueError, match="domain_images is empty"):
        train_model(source, None, epochs=1, domain_weight=0.5, domain_images=[], **KW)
    with pytest.raises(ValueError, match="domain_images is empty"):
        train_model(source, None, epochs=1, domain_weight=0.5,
                    domain_images=source.images[:0], **KW)
