"""Realism benchmark: can a classifier tell real SDSS cutouts from simulated ones?

A classifier two-sample test (Lopez-Paz & Oquab 2017, ICLR, arXiv:1610.06545).
Real and simulated *gri* ImgCutout JPEGs are pooled, labelled 0 (real) and 1
(simulated), and two classifiers are scored by 5-fold stratified cross-validated
ROC AUC on out-of-fold scores. AUC 0.5 means the classifier cannot tell the two
apart; 1.0 means it always can.

* Test 1: a small CNN (3 conv layers) on the images resized to 64 px, random flips.
* Test 2: gradient boosting (``HistGradientBoostingClassifier``) on the summary
  statistics of `summary_statistics` (colour, structure, background, JPEG).

Real: the 400 SDSS DR14 ImgCutout JPEGs of ``../shared/data/sdss-gri-jpeg-400``
(``--real``, or ``$ASTRO_METALLICITY_SHARED_DATA``). Simulated: ``--n-sim``
galaxies of a `astro_metallicity.mock.MockSky` with ``--seed`` (default 7002, a
seed not used to tune the simulation; 7001 and 7003 were used to tune the
``"sdss"`` appearance) and ``--appearance`` (default ``"sdss"``, the realistic
preset, which the bundled model was pretrained on; ``"classic"`` is the sky of the
earlier bundled models), drawn like
the real ones from a pool of 8 x ``--n-sim`` galaxies: galaxies of the
simulated spectroscopic sample passing the paper's catalogue cuts with a valid
``oh_p50``, re-weighted so their ``oh_p50`` histogram follows the real labels,
cut out at scale = 2 * petroR90_r / (0.396 * 128) arcsec/px, 128 x 128, through
``MockSky.cutout_jpeg`` (the bytes the mock server's ImgCutout route returns).

Run::

    OMP_NUM_THREADS=1 python benchmarks/sim_realism.py [--quick] [--output-dir DIR]

``--cnn-region sky`` or ``galaxy`` shows the CNN only the sky (pixels 40 px or more
from the centre) or only the galaxy (within 24 px), and ``--cnn-block N`` only
structure coarser than 128 / N px (each cutout averaged over blocks down to N x N
px), to find which part and which scale give the simulation away.

Prints both AUCs (pooled out-of-fold, and the mean and standard deviation over
folds), the statistics ranked by how well each alone separates real from
simulated (single-feature AUC), how far the CNN's scores of the two sets overlap,
medians of four statistics by measured axis ratio, and the run time. Writes ``montage.png``, ``cnn_extremes.png`` (the simulated
cutouts the CNN takes for real and those it finds most obvious, and the same for
the real ones, by its out-of-fold scores), ``histograms.png`` and
``sim_realism.json`` (with every cutout's CNN score and the objIDs of both sets,
to look the telling ones up in the catalogues) to the output directory (default: a
new temporary directory, printed).
"""

import argparse
import io
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
REAL_SUBDIR = "sdss-gri-jpeg-400"
PIXEL_SCALE = 0.396  # arcsec per SDSS pixel
SIZE = 128


# ----------------------------------------------------------------------------- data
def default_shared_data():
    """``$ASTRO_METALLICITY_SHARED_DATA``, else ``../shared/data`` next to the repository."""
    if os.environ.get("ASTRO_METALLICITY_SHARED_DATA"):
        return Path(os.environ["ASTRO_METALLICITY_SHARED_DATA"])
    return REPO.parent / "shared" / "data"


def _resolve_real(path):
    """Accept the shared data folder, the sample folder or its ``images`` folder."""
    path = Path(path)
    for cand in (path / REAL_SUBDIR / "images", path / "images", path):
        if cand.is_dir() and any(cand.glob("*.jpg")):
            return cand
    msg = f"no *.jpg images found in {path} (nor in {path / REAL_SUBDIR / 'images'})"
    raise FileNotFoundError(msg)


def _decode(data):
    from PIL import Image

    img = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
    img = img.convert("RGB")
    if img.size != (SIZE, SIZE):
        img = img.resize((SIZE, SIZE), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def jpeg_info(data):
    """Chroma subsampling and estimated IJG quality of a JPEG (from its quantisation tables)."""
    from PIL import Image, JpegImagePlugin

    img = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
    lum = np.asarray(img.quantization[0], dtype=float)
    base = np.array([16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
                     14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
                     18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
                     49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99],
                    dtype=float)
    best, err = None, np.inf
    for q in range(1, 101):
        s = 5000 / q if q < 50 else 200 - 2 * q
        tab = np.clip(np.floor((base * s + 50) / 100), 1, 255)
        e = np.abs(tab - lum).sum()
        if e < err:
            best, err = q, e
    sampling = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}.get(JpegImagePlugin.get_sampling(img), "?")
    return {"quality": best, "table_mismatch": float(err), "subsampling": sampling}


def load_real(path, n=None, seed=0):
    """Real cutouts: (images uint8 (N, 128, 128, 3), oh_p50 (N,), ids, JPEG info of the first)."""
    folder = _resolve_real(path)
    files = sorted(folder.glob("*.jpg"))
    labels = {}
    for cand in (folder / "labels.csv", folder.parent / "labels.csv"):
        if cand.exists():
            rows = np.genfromtxt(cand, delimiter=",", names=True, dtype=None, encoding="utf-8")
            labels = {str(r["objID"]): float(r["oh_p50"]) for r in rows}
            break
    if n is not None and n < len(files):
        rng = np.random.default_rng(seed)
        files = [files[i] for i in np.sort(rng.choice(len(files), n, replace=False))]
    images = np.stack([_decode(f) for f in files])
    oh = np.array([labels.get(f.stem, np.nan) for f in files])
    return images, oh, [f.stem for f in files], jpeg_info(files[0]), folder


# Catalogue cuts of the paper's CasJobs query (see ../shared/README.md)
def spectroscopic_sample(cat):
    """Boolean mask: the paper's cuts and a valid metallicity label (oh_p50 != -9999)."""
    def col(name):
        return np.asarray(getattr(cat[name], "value", cat[name]), dtype=float)

    oh = col("oh_p50")
    ok = np.isfinite(oh) & (oh > 0) & (oh != -9999)
    pr = col("petroMag_r")
    ok &= (pr > 10) & (pr < 18)
    ur = col("modelMag_u") - col("modelMag_r")
    ok &= (ur > 0) & (ur < 6)
    for b in "ugriz":
        m = col(f"modelMag_{b}")
        ok &= (m > 10) & (m < 25)
    ok &= col("rChi2") < 2
    ze = col("zErr")
    ok &= (ze > 0) & (ze < 0.01)
    ok &= col("z") > 0.02
    ok &= np.isfinite(col("petroR90_r")) & (col("petroR90_r") > 0)
    return ok


def label_matched_order(oh_sim, oh_real, rng, nbins=12):
    """Order candidate galaxies by weighted sampling so their oh_p50 follows the real histogram.

    Weights are real density / simulated density in quantile bins of the real labels;
    the weighted random permutation (without replacement) is consumed front to back.
    """
    real = oh_real[np.isfinite(oh_real)]
    edges = np.quantile(real, np.linspace(0, 1, nbins + 1))
    edges[0], edges[-1] = -np.inf, np.inf
    b_sim = np.clip(np.searchsorted(edges, oh_sim, side="right") - 1, 0, nbins - 1)
    n_sim_bin = np.bincount(b_sim, minlength=nbins).astype(float)
    w = (1.0 / nbins) / np.maximum(n_sim_bin[b_sim], 1.0)
    # Efraimidis-Spirakis weighted sampling without replacement: sort by u^(1/w)
    keys = np.log(rng.uniform(size=len(w))) / w
    return np.argsort(-keys)


def off_survey(img, thresh=2):
    """True if a full row or column near the edge is black in all bands (cutout leaves the survey)."""
    dark = img.max(axis=2) <= thresh
    rows, cols = dark.all(axis=1), dark.all(axis=0)
    return bool(rows.any() or cols.any())


def load_sim(n, seed, oh_real, pool_factor=8, appearance="sdss", sky_frames=None):
    """Simulated cutouts drawn like the real ones (see the module docstring)."""
    from astro_metallicity.mock import MockSky

    n_pool = max(int(pool_factor * n), 200)
    sky = MockSky(n_galaxies=n_pool, seed=seed, appearance=appearance, sky_frames=sky_frames)
    cat = sky.catalog

    def col(name):
        return np.asarray(getattr(cat[name], "value", cat[name]), dtype=float)

    ra, dec, p90, oh = col("ra"), col("dec"), col("petroR90_r"), col("oh_p50")
    sample = np.flatnonzero(spectroscopic_sample(cat))
    rng = np.random.default_rng([seed, 11])
    order = sample[label_matched_order(oh[sample], oh_real, rng)]
    images, chosen, rejected, first = [], [], 0, None
    for j in order:
        if len(images) == n:
            break
        scale = 2 * p90[j] / (PIXEL_SCALE * SIZE)
        data = sky.cutout_jpeg(ra[j], dec[j], scale=scale, width=SIZE, height=SIZE)
        img = _decode(data)
        if off_survey(img):
            rejected += 1
            continue
        first = first or data
        images.append(img)
        chosen.append(j)
    if len(images) < n:
        msg = f"only {len(images)} usable simulated galaxies out of {n_pool}; lower --n-sim"
        raise RuntimeError(msg)
    info = {"pool": n_pool, "appearance": appearance,
            "sky_frames": None if sky.sky_frames is None else sky.sky_frames.names,
            "spectroscopic_sample": int(len(sample)),
            "rejected_off_survey": rejected, "jpeg": jpeg_info(first)}
    return np.stack(images), oh[chosen], [int(cat["objid"][j]) for j in chosen], info


# ----------------------------------------------------------------------------- statistics
_Y, _X = np.mgrid[0:SIZE, 0:SIZE]
_R = np.hypot(_Y - (SIZE - 1) / 2, _X - (SIZE - 1) / 2)
_C32 = slice(SIZE // 2 - 16, SIZE // 2 + 16)
_C64 = slice(SIZE // 2 - 32, SIZE // 2 + 32)
_BORDER = np.ones((SIZE, SIZE), bool)
_BORDER[16:-16, 16:-16] = False
_RHALF_ORDER = np.argsort(_R.ravel(), kind="stable")


def statistics_matrix(images):
    """`summary_statistics` of every image: the statistic names and an (N, K) array."""
    rows = [summary_statistics(im) for im in images]
    names = list(rows[0])
    return names, np.array([[r[n] for n in names] for r in rows])


def _clipped(values, nsigma=3.0, iters=5):
    v = values
    for _ in range(iters):
        med, sd = np.median(v), v.std()
        keep = np.abs(v - med) <= nsigma * max(sd, 1e-6)
        if keep.all():
            break
        v = v[keep]
    return v


def _blockiness(y, period=8, mask=None):
    """Mean |difference| across block boundaries / mean |difference| inside blocks."""
    dh = np.abs(np.diff(y, axis=1))  # pairs (j, j+1)
    dv = np.abs(np.diff(y, axis=0))
    bh = (np.arange(dh.shape[1]) % period) == period - 1
    bv = (np.arange(dv.shape[0]) % period) == period - 1
    if mask is not None:
        mh = mask[:, 1:] & mask[:, :-1]
        mv = mask[1:, :] & mask[:-1, :]
    else:
        mh = np.ones(dh.shape, bool)
        mv = np.ones(dv.shape, bool)
    across = np.r_[dh[mh & bh[None, :]], dv[mv & bv[:, None]]]
    inside = np.r_[dh[mh & ~bh[None, :]], dv[mv & ~bv[:, None]]]
    return float(across.mean() / max(inside.mean(), 1e-6))


def summary_statistics(img):
    """Summary statistics of one 128 x 128 RGB cutout (uint8; R = i, G = r, B = g band).

    Regions: ``c32`` / ``c64`` the central 32 / 64 px box; ``border`` the outer
    16-px frame (mostly sky); radii r in px from the image centre (63.5, 63.5).
    The background is the 3-sigma-clipped border; ``L`` is the mean of R, G, B
    minus its background (the galaxy's luminance).

    Returns a dict of floats (NaN where undefined):

    * ``{R,G,B}_mean_{c32,c64,border}``, ``{R,G,B}_std_{...}``: mean and spread of
      each channel in each region (0-255 units).
    * ``RB_centre``, ``GB_centre``, ``RB_outer``, ``GB_outer``: log10 colour ratios
      R/B and G/B of the background-subtracted mean within r < 8 px (centre) and in
      16 <= r < 32 px (outskirts), each mean floored at 1; ``RB_gradient``,
      ``GB_gradient``: outskirts minus centre (positive = redder outskirts).
    * ``concentration``: flux of L within r < 8 px / flux within r < 24 px.
    * ``asymmetry``: sum |L - rot180(L)| / sum |L| in the central 64 px.
    * ``clumpiness``: sum max(L - G3(L), 0) / sum |L| in the central 64 px outside
      r < 4 px, G3 a Gaussian smoothing with sigma 3 px.
    * ``r_half``: radius (px) holding half the flux of L within r < 48 px.
    * ``centroid_offset``: distance (px) of the flux-weighted centroid of max(L, 0),
      smoothed with a 1.5-px Gaussian, within r < 10 px from the image centre (how
      well the cutout is centred on the light).
    * ``axis_ratio``: minor/major axis from the second moments of max(L, 0) within
      r < 24 px (1 = round, small = elongated or edge-on).
    * ``bkg_std_{L,R,G,B}``, ``bkg_mean_{R,G,B}``: noise level and colour of the
      clipped border (``bkg_std_L`` on the channel mean); ``bkg_zero_frac``: fraction
      of border pixels that are 0 in all channels (sky pedestal and clipping).
    * ``blockiness``, ``blockiness_border``: luma (Y) mean |difference| across 8-px
      JPEG block boundaries / inside blocks, whole image and border only (1 = no
      block artefacts); ``chroma_blockiness``: the same for Cb at 16-px boundaries
      (4:2:0 chroma blocks).
    """
    from scipy.ndimage import gaussian_filter

    x = img.astype(np.float64)
    out = {}
    regions = {"c32": (x[_C32, _C32].reshape(-1, 3)), "c64": x[_C64, _C64].reshape(-1, 3),
               "border": x[_BORDER]}
    for name, pix in regions.items():
        for k, ch in enumerate("RGB"):
            out[f"{ch}_mean_{name}"] = float(pix[:, k].mean())
            out[f"{ch}_std_{name}"] = float(pix[:, k].std())
    # background: sigma-clipped border, per channel and for the channel mean
    bkg = {}
    for k, ch in enumerate("RGB"):
        v = _clipped(x[_BORDER][:, k])
        bkg[ch] = float(v.mean())
        out[f"bkg_mean_{ch}"] = bkg[ch]
        out[f"bkg_std_{ch}"] = float(v.std())
    lum_raw = x.mean(axis=2)
    v = _clipped(lum_raw[_BORDER])
    out["bkg_std_L"] = float(v.std())
    out["bkg_zero_frac"] = float((x[_BORDER].max(axis=1) == 0).mean())
    lum = lum_raw - float(v.mean())
    # colours at centre and outskirts
    sub = x - np.array([bkg["R"], bkg["G"], bkg["B"]])
    centre, outer = _R < 8, (_R >= 16) & (_R < 32)
    for name, m in (("centre", centre), ("outer", outer)):
        r, g, b = (max(float(sub[..., k][m].mean()), 1.0) for k in range(3))
        out[f"RB_{name}"] = math.log10(r / b)
        out[f"GB_{name}"] = math.log10(g / b)
    out["RB_gradient"] = out["RB_outer"] - out["RB_centre"]
    out["GB_gradient"] = out["GB_outer"] - out["GB_centre"]
    # structure
    f8, f24 = lum[_R < 8].sum(), lum[_R < 24].sum()
    out["concentration"] = float(f8 / f24) if f24 > 0 else np.nan
    c = lum[_C64, _C64]
    denom = np.abs(c).sum()
    out["asymmetry"] = float(np.abs(c - c[::-1, ::-1]).sum() / denom) if denom > 0 else np.nan
    smooth = gaussian_filter(lum, 3.0)
    resid = np.clip(lum - smooth, 0, None)[_C64, _C64]
    keep = (_R >= 4)[_C64, _C64]
    out["clumpiness"] = float(resid[keep].sum() / denom) if denom > 0 else np.nan
    flat = lum.ravel()[_RHALF_ORDER]
    rr = _R.ravel()[_RHALF_ORDER]
    inside = rr < 48
    cum = np.cumsum(flat[inside])
    total = cum[-1]
    out["r_half"] = float(rr[inside][np.searchsorted(cum, 0.5 * total)]) if total > 0 else np.nan
    wc = np.clip(gaussian_filter(lum, 1.5), 0, None) * (_R < 10)
    if wc.sum() > 0:
        out["centroid_offset"] = float(math.hypot((wc * _Y).sum() / wc.sum() - (SIZE - 1) / 2,
                                                  (wc * _X).sum() / wc.sum() - (SIZE - 1) / 2))
    else:
        out["centroid_offset"] = np.nan
    w = np.clip(lum, 0, None) * (_R < 24)
    if w.sum() > 0:
        cy, cx = (w * _Y).sum() / w.sum(), (w * _X).sum() / w.sum()
        myy = (w * (_Y - cy) ** 2).sum() / w.sum()
        mxx = (w * (_X - cx) ** 2).sum() / w.sum()
        mxy = (w * (_X - cx) * (_Y - cy)).sum() / w.sum()
        ev = np.linalg.eigvalsh(np.array([[mxx, mxy], [mxy, myy]]))
        out["axis_ratio"] = float(math.sqrt(max(ev[0], 0) / ev[1])) if ev[1] > 0 else np.nan
    else:
        out["axis_ratio"] = np.nan
    # JPEG artefacts
    y = 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]
    cb = -0.168736 * x[..., 0] - 0.331264 * x[..., 1] + 0.5 * x[..., 2]
    out["blockiness"] = _blockiness(y)
    out["blockiness_border"] = _blockiness(y, mask=_BORDER)
    out["chroma_blockiness"] = _blockiness(cb, period=16)
    return out


STAT_GROUPS = {
    "colour and brightness": lambda n: n[0] in "RGB" and ("_mean_" in n or "_std_" in n)
    or n.startswith(("RB_", "GB_")),
    "structure": lambda n: n in ("concentration", "asymmetry", "clumpiness", "r_half", "axis_ratio",
                                   "centroid_offset"),
    "background": lambda n: n.startswith("bkg_"),
    "JPEG": lambda n: "blockiness" in n,
}


# ----------------------------------------------------------------------------- classifiers
def _folds(y, seed, k=5):
    from sklearn.model_selection import StratifiedKFold

    return list(StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def _auc_report(y, oof, folds):
    from sklearn.metrics import roc_auc_score

    per = [roc_auc_score(y[te], oof[te]) for _, te in folds]
    return {"auc": float(roc_auc_score(y, oof)), "fold_mean": float(np.mean(per)),
            "fold_std": float(np.std(per)), "folds": [float(a) for a in per]}


def stats_test(X, y, folds, seed):
    """Out-of-fold gradient-boosting scores on the statistics matrix."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    oof = np.zeros(len(y))
    for tr, te in folds:
        clf = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, max_leaf_nodes=15,
                                             l2_regularization=1.0, random_state=seed)
        clf.fit(X[tr], y[tr])
        oof[te] = clf.predict_proba(X[te])[:, 1]
    return _auc_report(y, oof, folds)


def cnn_test(images, y, folds, seed, epochs, threads, batch=32, log=print):
    """Out-of-fold scores of a 3-conv-layer CNN (64 px, random flips, AdamW, one-cycle)."""
    import torch
    from torch import nn
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    x = F.avg_pool2d(x, 2)  # 128 -> 64 px (area resampling)
    x = (x - 0.1) / 0.2
    t = torch.from_numpy(y.astype(np.float32))

    def make():
        def block(i, o):
            return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]
        return nn.Sequential(*block(3, 16), nn.MaxPool2d(2), *block(16, 32), nn.MaxPool2d(2),
                             *block(32, 64), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Dropout(0.2), nn.Linear(64, 1))

    oof = np.zeros(len(y))
    for f, (tr, te) in enumerate(folds):
        torch.manual_seed(seed * 100 + f)
        gen = torch.Generator().manual_seed(seed * 100 + f)
        net = make()
        opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-2)
        steps = epochs * math.ceil(len(tr) / batch)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
        tr_t = torch.from_numpy(tr)
        for ep in range(epochs):
            net.train()
            perm = tr_t[torch.randperm(len(tr_t), generator=gen)]
            for s in range(0, len(perm), batch):
                idx = perm[s:s + batch]
                xb = x[idx].clone()
                hf = torch.rand(len(idx), generator=gen) < 0.5
                vf = torch.rand(len(idx), generator=gen) < 0.5
                xb[hf] = xb[hf].flip(3)
                xb[vf] = xb[vf].flip(2)
                loss = F.binary_cross_entropy_with_logits(net(xb).squeeze(1), t[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        net.eval()
        with torch.no_grad():
            xe = x[torch.from_numpy(te)]
            views = (xe, xe.flip(3), xe.flip(2), xe.flip(2).flip(3))
            oof[te] = torch.stack([torch.sigmoid(net(v).squeeze(1)) for v in views]).mean(0).numpy()
        log(f"  CNN fold {f + 1}/{len(folds)} done (last batch loss {loss.item():.3f})")
    report = _auc_report(y, oof, folds)
    report["scores"] = [float(v) for v in oof]  # per cutout, in input order
    return report


def block_average(images, n):
    """Cutouts ``(N, 128, 128, 3)`` averaged over square blocks down to ``n`` x ``n`` px and
    repeated back to 128 x 128 (uint8), so the CNN sees only structure coarser than a block."""
    f = SIZE // n
    low = images.reshape(len(images), n, f, n, f, 3).mean(axis=(2, 4)).round().astype(np.uint8)
    return np.repeat(np.repeat(low, f, axis=1), f, axis=2)


#: Measured-axis-ratio bins and the statistics whose medians `by_axis_ratio` compares.
AXIS_RATIO_BINS = ((0.0, 0.4), (0.4, 0.6), (0.6, 0.8), (0.8, 1.0))
BY_AXIS_RATIO = ("G_mean_c32", "r_half", "concentration", "asymmetry")


def by_axis_ratio(names, X_real, X_sim):
    """Real and simulated medians of `BY_AXIS_RATIO` in bins of the measured axis ratio
    (None where fewer than 3 finite values): are round and inclined galaxies equally well
    simulated? The last bin includes its upper edge; cutouts without an axis ratio (NaN) are
    in no bin."""
    q = names.index("axis_ratio")
    last = AXIS_RATIO_BINS[-1][1]

    def median(values):
        values = values[np.isfinite(values)]
        return float(np.median(values)) if len(values) >= 3 else None

    rows = []
    for lo, hi in AXIS_RATIO_BINS:
        sel = [(x[:, q] >= lo) & ((x[:, q] < hi) | ((hi == last) & (x[:, q] == hi)))
               for x in (X_real, X_sim)]
        med = {n: [median(x[s, names.index(n)]) for x, s in zip((X_real, X_sim), sel)]
               for n in BY_AXIS_RATIO}
        rows.append({"range": [lo, hi], "n_real": int(sel[0].sum()), "n_sim": int(sel[1].sum()),
                     "medians": med})
    return rows


def _fmt(value):
    return "-" if value is None else f"{value:#.3g}"


# ----------------------------------------------------------------------------- figures
def montage(path, real, oh_real, sim, oh_sim, n=24, cols=6):
    import matplotlib.pyplot as plt

    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, 2 * cols + 1, figsize=(2 * cols + 1, rows + 0.6),
                             gridspec_kw={"width_ratios": [1] * cols + [0.15] + [1] * cols})
    for sel_set, (imgs, oh, off, title) in enumerate(
            ((real, oh_real, 0, "real SDSS ImgCutout"), (sim, oh_sim, cols + 1, "simulated (MockSky)"))):
        good = np.flatnonzero(np.isfinite(oh))
        ranked = good[np.argsort(oh[good])]
        pick = ranked[np.linspace(0, len(ranked) - 1, n).round().astype(int)]
        for k, j in enumerate(pick):
            ax = axes[k // cols, off + k % cols]
            ax.imshow(imgs[j])
            ax.text(2, 12, f"{oh[j]:.2f}", color="w", fontsize=6)
        axes[0, off + cols // 2].set_title(title + ", sorted by 12+log(O/H)", fontsize=8, loc="center")
    for ax in axes.ravel():
        ax.set_axis_off()
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.93, wspace=0.04, hspace=0.04)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cnn_extremes(scores, n_real, n=8):
    """The cutouts the CNN finds most and least real, from its out-of-fold scores.

    ``scores`` are the CNN's probabilities of "simulated", the ``n_real`` real
    cutouts first. Returns a dict of index arrays (into the real or the simulated
    set), ``n`` each, the most telling first: ``sim_most_real`` (simulated ones
    it takes for real), ``sim_most_simulated``, ``real_most_simulated`` and
    ``real_most_real``.
    """
    scores = np.asarray(scores, dtype=float)
    real, sim = scores[:n_real], scores[n_real:]
    return {"sim_most_real": np.argsort(sim, kind="stable")[:n],
            "sim_most_simulated": np.argsort(-sim, kind="stable")[:n],
            "real_most_simulated": np.argsort(-real, kind="stable")[:n],
            "real_most_real": np.argsort(real, kind="stable")[:n]}


def extremes_montage(path, real, sim, scores, n=8):
    """Four rows of ``n`` cutouts picked by `cnn_extremes`, each with its CNN score."""
    import matplotlib.pyplot as plt

    picks = cnn_extremes(scores, len(real), n)
    scores = np.asarray(scores, dtype=float)
    real_scores, sim_scores = scores[:len(real)], scores[len(real):]
    rows = [("simulated, taken for real", sim, sim_scores, picks["sim_most_real"]),
            ("simulated, most obvious", sim, sim_scores, picks["sim_most_simulated"]),
            ("real, taken for simulated", real, real_scores, picks["real_most_simulated"]),
            ("real, most obvious", real, real_scores, picks["real_most_real"])]
    fig, axes = plt.subplots(len(rows), n, figsize=(n, len(rows) * 1.15 + 0.2), squeeze=False)
    for r, (title, imgs, sc, index) in enumerate(rows):
        for k, j in enumerate(index):
            axes[r, k].imshow(imgs[j])
            axes[r, k].text(2, 12, f"{sc[j]:.2f}", color="w", fontsize=6)
        axes[r, 0].set_title(f"{title} (CNN score: probability of simulated)", fontsize=7,
                             loc="left")
    for ax in axes.ravel():
        ax.set_axis_off()
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.95, wspace=0.04, hspace=0.25)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def histograms(path, names, X_real, X_sim, table):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(13, 5.5))
    for ax, row in zip(axes.ravel(), table[:8]):
        k = names.index(row["statistic"])
        a, b = X_real[:, k], X_sim[:, k]
        both = np.r_[a, b]
        both = both[np.isfinite(both)]
        lo, hi = np.percentile(both, [0.5, 99.5])
        bins = np.linspace(lo, hi if hi > lo else lo + 1, 31)
        ax.hist(a[np.isfinite(a)], bins, alpha=0.55, label="real", color="C0", density=True)
        ax.hist(b[np.isfinite(b)], bins, alpha=0.55, label="simulated", color="C3", density=True)
        ax.set_title(f"{row['statistic']} (AUC {row['auc']:.2f})", fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", type=Path, default=None,
                        help="real JPEGs: the shared data folder, sdss-gri-jpeg-400 or its images/ "
                             "(default $ASTRO_METALLICITY_SHARED_DATA or ../shared/data)")
    parser.add_argument("--n-sim", type=int, default=400, help="simulated galaxies (default 400)")
    parser.add_argument("--seed", type=int, default=7002,
                        help="MockSky seed (default 7002, not used to tune the simulation)")
    parser.add_argument("--appearance", default="sdss", choices=("sdss", "classic"),
                        help="appearance preset of the simulated sky (default sdss, the bundled "
                             "model's pretraining sky; classic: the earlier models')")
    parser.add_argument("--sky-frames", type=Path, nargs="+", default=None,
                        help="real SDSS frame files (g, r, i of a field) to inject the simulated "
                             "galaxies into (MockSky(sky_frames=...)); default: the simulated sky")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1; on a busy 2-core machine 1 is faster)")
    parser.add_argument("--cv-seed", type=int, default=0, help="seed of folds and classifiers")
    parser.add_argument("--cnn-region", default="all", choices=("all", "sky", "galaxy"),
                        help="what the CNN sees: the whole cutout (default), the sky only (pixels "
                             "within 40 px of the centre set to 0) or the galaxy only (pixels 24 px "
                             "or more from the centre set to 0)")
    parser.add_argument("--cnn-block", type=int, default=SIZE, choices=(128, 32, 16, 8),
                        help="what the CNN sees at which resolution: each cutout averaged over "
                             "square blocks down to N x N px and repeated back to 128 (default "
                             "128: as it is; the CNN itself works at 64 px), after --cnn-region; "
                             "a high AUC at 16 says the cue is the coarse distribution of light, "
                             "not texture")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 120 real and 120 simulated galaxies, 3 epochs")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="figures and JSON (default: a new temporary directory)")
    args = parser.parse_args(argv)
    t_start = time.perf_counter()
    timings = {}
    n_real = None
    if args.quick:
        args.n_sim = min(args.n_sim, 120)
        args.epochs = min(args.epochs, 3)
        n_real = 120
    out_dir = args.output_dir or Path(tempfile.mkdtemp(prefix="sim_realism_"))
    out_dir.mkdir(parents=True, exist_ok=True)

    def log(msg):
        print(msg, flush=True)

    t0 = time.perf_counter()
    real, oh_real, real_ids, real_jpeg, folder = load_real(args.real or default_shared_data(), n_real,
                                                            seed=args.cv_seed)
    timings["load_real_s"] = time.perf_counter() - t0
    log(f"real: {len(real)} cutouts from {folder} (JPEG quality ~{real_jpeg['quality']}, "
        f"{real_jpeg['subsampling']})")
    t0 = time.perf_counter()
    sim, oh_sim, sim_ids, sim_info = load_sim(args.n_sim, args.seed, oh_real, appearance=args.appearance,
                                               sky_frames=args.sky_frames)
    timings["simulate_s"] = time.perf_counter() - t0
    log(f"simulated: {len(sim)} cutouts from MockSky(seed={args.seed}, n_galaxies={sim_info['pool']}, "
        f"appearance={args.appearance!r}, sky_frames={sim_info['sky_frames']}), "
        f"{sim_info['spectroscopic_sample']} in the spectroscopic sample, "
        f"{sim_info['rejected_off_survey']} rejected off the survey edge "
        f"(JPEG quality ~{sim_info['jpeg']['quality']}, {sim_info['jpeg']['subsampling']}); "
        f"{timings['simulate_s']:.1f} s")
    lab = {"real": oh_real[np.isfinite(oh_real)], "sim": oh_sim}
    log("oh_p50 median / std: real {:.3f} / {:.3f}, simulated {:.3f} / {:.3f}".format(
        np.median(lab["real"]), lab["real"].std(), np.median(lab["sim"]), lab["sim"].std()))

    t0 = time.perf_counter()
    names, X = statistics_matrix(np.concatenate([real, sim]))
    y = np.r_[np.zeros(len(real)), np.ones(len(sim))].astype(int)
    X_real, X_sim = X[y == 0], X[y == 1]
    timings["statistics_s"] = time.perf_counter() - t0

    from sklearn.metrics import roc_auc_score

    table = []
    for k, n in enumerate(names):
        col = X[:, k].copy()
        finite = np.isfinite(col)
        col[~finite] = np.nanmedian(col) if finite.any() else 0.0
        auc = roc_auc_score(y, col)
        a, b = X_real[:, k], X_sim[:, k]
        sd = math.sqrt(0.5 * (np.nanvar(a) + np.nanvar(b)))
        table.append({"statistic": n, "auc": float(auc), "separation": float(abs(auc - 0.5) + 0.5),
                      "smd": float((np.nanmean(b) - np.nanmean(a)) / sd) if sd > 0 else 0.0,
                      "real_median": float(np.nanmedian(a)), "sim_median": float(np.nanmedian(b)),
                      "nan_real": int((~np.isfinite(a)).sum()), "nan_sim": int((~np.isfinite(b)).sum())})
    table.sort(key=lambda r: -r["separation"])

    folds = _folds(y, args.cv_seed)
    t0 = time.perf_counter()
    stats = stats_test(X, y, folds, args.cv_seed)
    groups = {}
    for g, pred in STAT_GROUPS.items():
        cols = [k for k, n in enumerate(names) if pred(n)]
        groups[g] = {"n_statistics": len(cols), **stats_test(X[:, cols], y, folds, args.cv_seed)}
    timings["statistics_test_s"] = time.perf_counter() - t0
    log(f"statistics test (gradient boosting, {len(names)} statistics): AUC {stats['auc']:.3f} "
        f"(folds {stats['fold_mean']:.3f} +/- {stats['fold_std']:.3f}); "
        f"{timings['statistics_test_s']:.1f} s")
    for g, r in groups.items():
        log(f"  {g:22s} ({r['n_statistics']:2d} statistics) alone: AUC {r['auc']:.3f}")

    t0 = time.perf_counter()
    log(f"CNN test: 3 conv layers, 64 px, {args.epochs} epochs, {args.threads} thread(s)")
    pixels = np.concatenate([real, sim])
    if args.cnn_region != "all":
        # which part of the cutout gives the simulation away
        hide = _R < 40 if args.cnn_region == "sky" else _R >= 24
        pixels = pixels.copy()
        pixels[:, hide] = 0
        log(f"CNN sees the {args.cnn_region} only")
    if args.cnn_block != SIZE:
        pixels = block_average(pixels, args.cnn_block)
        log(f"CNN sees the cutouts averaged down to {args.cnn_block} x {args.cnn_block} px "
            f"({SIZE // args.cnn_block}-px blocks)")
    cnn = cnn_test(pixels, y, folds, args.cv_seed, args.epochs, args.threads, log=log)
    timings["cnn_test_s"] = time.perf_counter() - t0
    log(f"CNN test: AUC {cnn['auc']:.3f} (folds {cnn['fold_mean']:.3f} +/- {cnn['fold_std']:.3f}); "
        f"{timings['cnn_test_s']:.1f} s")
    cnn_real, cnn_sim = np.array(cnn["scores"][:len(real)]), np.array(cnn["scores"][len(real):])
    log(f"  simulated cutouts scored below the median real one: "
        f"{int((cnn_sim < np.median(cnn_real)).sum())} of {len(sim)}; real ones above the "
        f"median simulated one: {int((cnn_real > np.median(cnn_sim)).sum())} of {len(real)}")

    by_shape = by_axis_ratio(names, X_real, X_sim)
    log("\nmedians by measured axis ratio (real / simulated; counts first)")
    for b in by_shape:
        log(f"  axis ratio {b['range'][0]:.1f}-{b['range'][1]:.1f}: n {b['n_real']} / {b['n_sim']}; "
            + "; ".join(f"{k} {_fmt(v[0])} / {_fmt(v[1])}" for k, v in b["medians"].items()))

    log("\nstatistics ranked by single-feature AUC (label 1 = simulated; >0.5: simulated larger)")
    log(f"{'statistic':20s} {'AUC':>6s} {'SMD':>7s} {'real med':>10s} {'sim med':>10s}")
    for r in table:
        log(f"{r['statistic']:20s} {r['auc']:6.3f} {r['smd']:7.2f} {r['real_median']:10.4g} "
            f"{r['sim_median']:10.4g}")

    t0 = time.perf_counter()
    montage(out_dir / "montage.png", real, oh_real, sim, oh_sim)
    extremes_montage(out_dir / "cnn_extremes.png", real, sim, cnn["scores"])
    histograms(out_dir / "histograms.png", names, X_real, X_sim, table)
    timings["figures_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start
    result = {
        "cnn": cnn, "statistics": stats, "statistics_groups": groups, "ranked_statistics": table,
        "by_axis_ratio": by_shape, "cnn_block": args.cnn_block,
        "n_real": int(len(real)), "n_sim": int(len(sim)), "sky_seed": args.seed,
        "appearance": args.appearance,
        "cv_seed": args.cv_seed, "cnn_region": args.cnn_region, "epochs": args.epochs, "quick": args.quick, "threads": args.threads,
        "labels": {k: {"median": float(np.median(v)), "mean": float(v.mean()), "std": float(v.std())}
                   for k, v in lab.items()},
        "real_jpeg": real_jpeg, "sim_info": sim_info, "timings_s": timings,
        "real_folder": str(folder), "python": sys.version.split()[0],
        # strings: SDSS objIDs exceed 2**53, where JSON readers outside Python round them
        "real_objids": [str(i) for i in real_ids], "sim_objids": [str(i) for i in sim_ids],
    }
    (out_dir / "sim_realism.json").write_text(json.dumps(result, indent=1))
    log(f"\nCNN AUC {cnn['auc']:.3f} +/- {cnn['fold_std']:.3f}; statistics AUC {stats['auc']:.3f} "
        f"+/- {stats['fold_std']:.3f} (0.5 = indistinguishable; target <= 0.75 and <= 0.80)")
    log(f"total run time {timings['total_s']:.1f} s; figures and JSON in {out_dir}")
    return result


if __name__ == "__main__":
    main()
