"""How much metallicity information the simulated photometry carries beyond the MZR.

Fits gradient boosting on catalogue photometry and structure (what an image model can
see) and compares its 12+log(O/H) RMSE on held-out galaxies with the mass-metallicity
relation applied to the catalogue mass. Run: ``python benchmarks/check_mock_signal.py``.
"""

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
from sklearn.ensemble import HistGradientBoostingRegressor

from astro_metallicity.mock import simulate_galaxies
from astro_metallicity.relations import tremonti_mzr


def _rmse(a, b):
    return float(np.sqrt(np.mean((a - b) ** 2)))


def run(n, seed, dust_tau0):
    c = simulate_galaxies(n, seed=seed, dust_tau0=dust_tau0)
    c = c[c["oh_p50"].value > 0]
    oh = c["oh_p50"].value
    g, r, i = (c[f"modelMag_{b}"].value for b in "gri")
    base = [g, r, i, g - r, r - i, g - i]
    struct = [c["petroR50_r"].value, c["petroR90_r"].value]
    feats = {
        "mags+colours": np.column_stack(base),
        "mags+colours+radii": np.column_stack(base + struct),
        "mags+colours+radii+axis_ratio": np.column_stack(base + struct + [c["axis_ratio"]]),
    }
    rng = np.random.default_rng(0)
    test = rng.random(len(c)) < 0.3
    out = {}
    for name in ("lgm_tot_p50", "logm_true"):
        x = c[name].value
        out[f"MZR Tremonti on {name}"] = _rmse(tremonti_mzr(x[test]), oh[test])
        coef = np.polyfit(x[~test], oh[~test], 2)
        out[f"MZR quadratic fit on {name}"] = _rmse(np.polyval(coef, x[test]), oh[test])
    for name, X in feats.items():
        model = HistGradientBoostingRegressor(max_iter=300, learning_rate=0.05, random_state=0)
        model.fit(X[~test], oh[~test])
        out[f"GB {name}"] = _rmse(model.predict(X[test]), oh[test])
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tau0", type=float, nargs="+", default=[0.0, 0.7])
    args = parser.parse_args()
    for tau0 in args.tau0:
        print(f"dust_tau0 = {tau0}  (n = {args.n}, seed = {args.seed}); RMSE of 12+log(O/H) on 30% held out")
        res = run(args.n, args.seed, tau0)
        ref = res["MZR Tremonti on lgm_tot_p50"]
        for k, v in res.items():
            print(f"  {k:42s} {v:.4f}  ({100 * (v / ref - 1):+.1f}% vs MZR on lgm_tot_p50)")


if __name__ == "__main__":
    main()
