"""Learned sim-to-real translation of simulated cutouts (an experiment, not yet in the recipe).

A small network changes each simulated colour cutout by a smooth gain and offset
field, predicted at a quarter of the resolution and interpolated back::

    out = sim * exp(gain) + offset

It is trained adversarially (a GAN with the non-saturating loss; Goodfellow et
al. 2014, arXiv:1406.2661) against unlabelled real cutouts: a discriminator
learns to tell real from translated cutouts at 64 px, the translator to fool
it, and an L1 penalty on ``gain`` and ``offset`` keeps the change small. It
starts as the identity. Because the field is smooth (one value per 4 x 4 px,
interpolated), the translator can change the coarse distribution of light and
colour, which is where the realism benchmark finds most of the difference
(docs: *Realism of the simulated sky*). As a function of the cutout alone it
cannot place structure (patches, clumps) that a smooth simulated galaxy gives
no hint of; with ``noise_channels`` it is also given random maps to place it
by (on the realism benchmark this did not help). Labels are never used: the
metallicity of a simulated galaxy stays what the simulation says.

`train_translation` trains it, `translate_images` applies it to uint8 cutouts,
`save_translator` and `load_translator` store it (``torch.load(...,
weights_only=True)``). ``benchmarks/sim_translation.py`` measures what it does to
the realism tests on real cutouts it never saw.
"""

import copy
import dataclasses

import numpy as np

__all__ = ["TranslationResult", "load_translator", "save_translator", "train_translation",
           "translate_images"]

#: Offsets are this times the network's output (in units of the 0-1 pixel scale).
_OFFSET_SCALE = 0.05


def _make_translator(channels=32, reduce=4, noise_channels=0):
    """The translator network (identity at initialisation)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class ImageTranslator(nn.Module):
        """Gain and offset fields from a 1/``reduce`` resolution copy of the cutout."""

        def __init__(self):
            super().__init__()
            self.reduce = reduce
            self.channels = channels
            self.noise_channels = noise_channels
            self.inp = nn.Sequential(nn.Conv2d(3 + noise_channels, channels, 3, padding=1),
                                     nn.ReLU())
            self.blocks = nn.ModuleList(
                nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
                              nn.Conv2d(channels, channels, 3, padding=1)) for _ in range(4))
            self.down = nn.Conv2d(channels, channels, 3, stride=2, padding=1)  # context
            self.out = nn.Conv2d(2 * channels, 6, 3, padding=1)
            # zero output layer: gain 0 and offset 0, so training starts from the identity
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

        def fields(self, x, generator=None):
            """``gain`` and ``offset`` at full resolution for images ``x`` in [0, 1]."""
            small = F.avg_pool2d(x, self.reduce)
            if self.noise_channels:
                # random maps let it paint structure the smooth input lacks (a deterministic
                # function of a smooth, symmetric galaxy stays smooth and symmetric)
                noise = torch.randn((len(x), self.noise_channels, *small.shape[-2:]),
                                    generator=generator, dtype=x.dtype).to(x.device)
                small = torch.cat([small, noise], 1)
            h = self.inp(small)
            for block in self.blocks[:2]:
                h = F.relu(h + block(h))
            d = F.relu(self.down(h))
            for block in self.blocks[2:]:
                d = F.relu(d + block(d))
            d = F.interpolate(d, size=h.shape[-2:], mode="bilinear", align_corners=False)
            o = self.out(torch.cat([h, d], 1))
            size = x.shape[-2:]
            gain = F.interpolate(o[:, :3], size=size, mode="bilinear", align_corners=False)
            offset = F.interpolate(_OFFSET_SCALE * o[:, 3:], size=size, mode="bilinear",
                                   align_corners=False)
            return gain, offset

        def forward(self, x, generator=None):
            return _apply_fields(x, *self.fields(x, generator))

    return ImageTranslator()


def _apply_fields(x, gain, offset):
    """The translated images: ``x * exp(gain) + offset``, kept within [0, 1]."""
    return (x * gain.exp() + offset).clamp(0.0, 1.0)


def _make_discriminator():
    """Real-or-translated classifier on 64-px cutouts (one logit per image)."""
    from torch import nn

    def block(i, o):
        return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.LeakyReLU(0.2)]

    return nn.Sequential(*block(3, 32), nn.AvgPool2d(2), *block(32, 64), nn.AvgPool2d(2),
                         *block(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(128, 1))


def _as_tensor(images):
    import torch

    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)


def _check_images(images, name):
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        msg = f"{name} must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}"
        raise ValueError(msg)
    if len(images) == 0:
        msg = f"{name} is empty"
        raise ValueError(msg)
    if images.shape[1] != images.shape[2] or images.shape[1] % 8:
        msg = f"{name} must be square, a multiple of 8 px on a side, got {images.shape[1:3]}"
        raise ValueError(msg)
    return images


@dataclasses.dataclass
class TranslationResult:
    """What `train_translation` returns.

    Attributes
    ----------
    translator : `torch.nn.Module`
        The trained translator (the moving average of its weights, evaluation
        mode); apply it with `translate_images`.
    history : list of dict
        Every ``log_every`` iterations, for the translator as it trains (not the
        average): ``iteration``, ``disc_loss``, ``adv_loss``
        (the translator's adversarial loss), ``disc_accuracy`` (on that batch),
        ``mean_abs_gain`` and ``mean_abs_offset``.
    """

    translator: object
    history: list


def train_translation(sim_images, real_images, *, iterations=2000, penalty=0.1, batch_size=16,
                      lr=2e-4, disc_lr=1e-3, ema_decay=0.995, noise_channels=0, seed=0,
                      threads=None, log_every=100, log=None):
    """Train a gain-and-offset translator from simulated to real cutouts.

    Parameters
    ----------
    sim_images, real_images : `~numpy.ndarray`
        uint8 colour cutouts (N, H, H, 3) of one size, H a multiple of 8 (the
        pipeline's 128 x 128). Only images, no labels. Each batch is rotated by a
        random multiple of 90 degrees and flipped at random. The discriminator
        sees them averaged down to 64 px (by H // 64; smaller ones as they are),
        as the realism benchmark's CNN does.
    iterations : int, optional
        Updates of the translator (each after one update of the discriminator).
    penalty : float, optional
        Weight of the L1 penalty ``mean|gain| + 10 mean|offset|`` that keeps the
        translation small.
    batch_size : int, optional
        Images of each kind per update.
    lr, disc_lr : float, optional
        Adam learning rates of translator and discriminator (betas 0.5, 0.999).
    ema_decay : float, optional
        The translator returned is an exponential moving average of the weights
        over the iterations with this decay, in [0, 1) (0: the last iterate). A
        GAN's last iterate can swing far from where it was a few hundred
        iterations before; the average is meant to be steadier (not measured).
    noise_channels : int, optional
        Maps of Gaussian noise (at the field's resolution) given to the
        translator with each cutout, so that it can paint random structure
        (colour patches, clumps) into smooth simulated galaxies; 0 (default):
        a deterministic translation.
    seed : int, optional
        Seeds initialisation, sampling and augmentation (torch's global random
        state is restored afterwards).
    threads : int, optional
        torch threads while training (default: torch's own choice; restored
        afterwards).
    log_every : int, optional
        Iterations between entries of ``history`` (and calls of ``log``).
    log : callable, optional
        Called with a one-line progress message.

    Returns
    -------
    result : `TranslationResult`
    """
    import torch

    sim_images = _check_images(sim_images, "sim_images")
    real_images = _check_images(real_images, "real_images")
    if sim_images.shape[1:] != real_images.shape[1:]:
        msg = (f"sim_images and real_images must have one size, got {sim_images.shape[1:3]} "
               f"and {real_images.shape[1:3]}")
        raise ValueError(msg)
    if iterations < 1 or batch_size < 1 or log_every < 1:
        msg = (f"iterations, batch_size and log_every must be positive, got {iterations}, "
               f"{batch_size} and {log_every}")
        raise ValueError(msg)
    if not 0.0 <= ema_decay < 1.0:
        msg = f"ema_decay must be in [0, 1), got {ema_decay}"
        raise ValueError(msg)
    if int(noise_channels) != noise_channels or noise_channels < 0:
        msg = f"noise_channels must be a whole number >= 0, got {noise_channels}"
        raise ValueError(msg)
    noise_channels = int(noise_channels)
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return _train(sim_images, real_images, iterations, penalty, batch_size, lr, disc_lr,
                          ema_decay, noise_channels, np.random.default_rng(seed), log_every,
                          log)
    finally:
        torch.set_num_threads(previous_threads)


def _train(sim_images, real_images, iterations, penalty, batch_size, lr, disc_lr, ema_decay,
           noise_channels, rng, log_every, log):
    """The training loop of `train_translation` (arguments checked there)."""
    import torch
    import torch.nn.functional as F

    translator, disc = _make_translator(noise_channels=noise_channels), _make_discriminator()
    opt_t = torch.optim.Adam(translator.parameters(), lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), disc_lr, betas=(0.5, 0.999))
    translator.train()
    disc.train()
    average = copy.deepcopy(translator)

    def batch(images):
        x = _as_tensor(images[rng.integers(0, len(images), batch_size)])
        x = torch.rot90(x, int(rng.integers(4)), (2, 3))
        return torch.flip(x, (3,)) if rng.random() < 0.5 else x

    def disc_input(x):  # what the realism benchmark's CNN sees: 64 px, standardised like it
        if x.shape[-1] > 64:
            x = F.avg_pool2d(x, x.shape[-1] // 64)
        return (x - 0.1) / 0.2

    history = []
    for it in range(1, iterations + 1):
        sim, real = batch(sim_images), disc_input(batch(real_images))
        gain, offset = translator.fields(sim)
        fake = _apply_fields(sim, gain, offset)
        # real and translated in one batch, so BatchNorm sees both kinds
        logits = disc(torch.cat([real, disc_input(fake.detach())]))
        d_real, d_fake = logits[:batch_size], logits[batch_size:]
        disc_loss = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
        opt_d.zero_grad()
        disc_loss.backward()
        opt_d.step()
        disc.requires_grad_(False)  # only the translator learns from this pass
        d_fake = disc(torch.cat([real, disc_input(fake)]))[batch_size:]
        adv_loss = F.softplus(-d_fake).mean()
        size = gain.abs().mean() + 10.0 * offset.abs().mean()
        opt_t.zero_grad()
        (adv_loss + penalty * size).backward()
        opt_t.step()
        disc.requires_grad_(True)
        with torch.no_grad():
            for kept, live in zip(average.parameters(), translator.parameters()):
                kept.mul_(ema_decay).add_(live, alpha=1.0 - ema_decay)
        if it % log_every == 0 or it == iterations:
            with torch.no_grad():
                accuracy = ((d_real > 0).float().mean()
                            + (logits[batch_size:] < 0).float().mean()) / 2
                entry = {"iteration": it, "disc_loss": disc_loss.item(),
                         "adv_loss": adv_loss.item(), "disc_accuracy": accuracy.item(),
                         "mean_abs_gain": gain.abs().mean().item(),
                         "mean_abs_offset": offset.abs().mean().item()}
            history.append(entry)
            if log is not None:
                log(f"iteration {it}/{iterations}: discriminator loss {entry['disc_loss']:.3f} "
                    f"(accuracy {entry['disc_accuracy']:.2f}), adversarial loss "
                    f"{entry['adv_loss']:.3f}, mean |gain| {entry['mean_abs_gain']:.3f}, "
                    f"mean |offset| {entry['mean_abs_offset']:.4f}")
    average.eval()
    return TranslationResult(average, history)


def translate_images(translator, images, *, batch_size=64, seed=0):
    """Apply a translator to uint8 colour cutouts.

    Parameters
    ----------
    translator : `torch.nn.Module`
        From `train_translation` or `load_translator`.
    images : `~numpy.ndarray`
        uint8 (N, H, H, 3), H a multiple of 8.
    batch_size : int, optional
        Images per forward pass.
    seed : int, optional
        Seeds the noise maps of a translator trained with ``noise_channels``
        (the same seed and ``batch_size``, the same output).

    Returns
    -------
    translated : `~numpy.ndarray`
        uint8 (N, H, W, 3), rounded to the nearest level.
    """
    import torch

    images = _check_images(images, "images")
    out = np.empty_like(images)
    translator.eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            y = translator(_as_tensor(images[start:start + batch_size]), generator)
            out[start:start + batch_size] = (y.permute(0, 2, 3, 1).numpy() * 255.0).round()
    return out


def save_translator(translator, path):
    """Write a translator's weights and shape to a ``.pt`` file of tensors.

    Parameters
    ----------
    translator : `torch.nn.Module`
        From `train_translation` or `load_translator`.
    path : str or `~pathlib.Path`
        The file to write.
    """
    import torch

    torch.save({"state_dict": translator.state_dict(),
                "config": {"channels": translator.channels, "reduce": translator.reduce,
                           "noise_channels": translator.noise_channels}}, path)


def load_translator(path):
    """Read a translator written by `save_translator`.

    Parameters
    ----------
    path : str or `~pathlib.Path`
        A file from `save_translator`; read with ``torch.load(...,
        weights_only=True)``, so it cannot run code.

    Returns
    -------
    translator : `torch.nn.Module`
        In evaluation mode.
    """
    import torch

    saved = torch.load(path, map_location="cpu", weights_only=True)
    translator = _make_translator(**saved["config"])
    translator.load_state_dict(saved["state_dict"])
    translator.eval()
    return translator

