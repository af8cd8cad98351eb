"""Ding (2013) outliers experiment: report Figure 1c.

Empirical risk of a 1-D linear model (score = theta x) over a grid of theta, for the logistic loss,
the Huberised logistic loss (tau = 0.1) and the partially Huberised logistic loss (tau = 1.1), on
10,000 separable inliers (N(+-1, 1), labelled +-1) with and without 50 mislabelled outliers
(25 from N(-200, 1) labelled +1, 25 from N(200, 1) labelled -1); report section 4.2.

    python synthetic_ding.py        # the paper's setting, ~4 s on CPU (2.3 s of it importing torch)

writes results/synthetic/ding.csv (risk per theta, loss and outliers yes/no), ding_minimisers.csv
and ding.{png,pdf} (solid: without outliers, dashed: with outliers).

Expected (report): without outliers every loss is minimised at the largest theta of the grid
(theta* = +inf); with outliers the logistic and Huberised minimisers drop to about 0, while the
partially Huberised minimiser stays at the largest theta. Got here (seed 0): theta* = 2 for all three
without outliers; with outliers 0 (logistic), -0.01 (Huberised, whose risk is flat within 1e-5 near
0) and 2 (partially Huberised).
"""
import argparse
import math
import os

import numpy as np

from margin_losses import COLOURS, LABELS, MARGIN_LOSSES, check_flags, with_taus
from results import pyplot, save_figure, versions, write_csv

N_INLIERS = 5000  # per class
N_OUTLIERS = 25  # per class
OUTLIER_LOCATION = 200.0


def make_data(rng):
    """x and y in {-1, +1}: inliers first (+1 class, then -1 class), then the outliers.

    Outliers sit on the wrong side: +1 labels at -200, -1 labels at +200.
    """
    counts = [N_INLIERS, N_INLIERS, N_OUTLIERS, N_OUTLIERS]
    x = rng.normal(np.repeat([1.0, -1.0, -OUTLIER_LOCATION, OUTLIER_LOCATION], counts), 1.0)
    return x, np.repeat([1.0, -1.0, 1.0, -1.0], counts)


def theta_grid(theta_min, theta_max, theta_step):
    """Evenly spaced grid from theta_min to theta_max inclusive (rounded so the CSV reads cleanly)."""
    return np.round(np.linspace(theta_min, theta_max, round((theta_max - theta_min) / theta_step) + 1), 12)


def risk_curves(theta, x, y, loss):
    """Mean loss(theta y x) over the inliers only (False) and over all samples (True), per theta."""
    inliers, everything = [], []
    # Blocks of 64 thetas x all samples: vectorised, yet memory stays ~5 MB however fine the grid.
    for block in np.array_split(theta, math.ceil(len(theta) / 64)):
        values = loss(np.outer(block, y * x))
        inliers.append(values[:, :2 * N_INLIERS].mean(axis=1))
        everything.append(values.mean(axis=1))
    return {False: np.concatenate(inliers), True: np.concatenate(everything)}


def minimisers(theta, curves):
    """Rows (loss, outliers, theta*, min risk); argmin takes the smallest theta on ties."""
    rows = []
    for (name, tau, outliers), risk in curves.items():
        i = int(np.argmin(risk))
        rows.append({"loss": name, "tau": tau, "outliers": outliers, "theta_star": theta[i],
                     "risk_min": risk[i], "at_largest_theta": bool(i == len(theta) - 1)})
    return rows


def plot(theta, curves, out):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for (name, tau, outliers), risk in curves.items():
        ax.plot(theta, risk, color=COLOURS[name], linestyle="--" if outliers else "-")
    # Two short legends, colour for the loss and line style for the data, instead of six entries.
    taus = {name: tau for name, tau, _ in curves}
    loss_legend = ax.legend([plt.Line2D([], [], color=COLOURS[name]) for name in MARGIN_LOSSES],
                            [LABELS[name] + ("" if taus[name] == "" else f" ($\\tau$ = {taus[name]:g})")
                             for name in MARGIN_LOSSES], loc="upper center", fontsize=8)
    ax.add_artist(loss_legend)
    ax.legend([plt.Line2D([], [], color="black", linestyle=style) for style in ("-", "--")],
              ["without outliers", "with outliers"], loc="lower left", fontsize=8)
    ax.set_xlabel("$\\theta$")
    ax.set_ylabel("Empirical risk")
    ax.set_title("Ding (2013) outliers: risk of the linear model $\\theta x$")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, os.path.join(out, "ding"))
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="seed (integer >= 0) of the data")
    parser.add_argument("--tau-huber", type=float, default=0.1, help="Huberised loss tau in (0, 1), unitless")
    parser.add_argument("--tau-phuber", type=float, default=1.1,
                        help="partially Huberised loss tau > 1, unitless")
    parser.add_argument("--theta-min", type=float, default=-2.0,
                        help="smallest theta of the grid (theta is the slope of the score theta x)")
    parser.add_argument("--theta-max", type=float, default=2.0, help="largest theta of the grid")
    parser.add_argument("--theta-step", type=float, default=0.01,
                        help="grid spacing in theta (> 0; theta-max - theta-min must be a multiple of it)")
    parser.add_argument("--out", default="results/synthetic", help="output folder")
    parser.add_argument("--no-plot", action="store_true", help="skip the figure")
    args = parser.parse_args(argv)

    check_flags(parser, args.seed, args.tau_huber, args.tau_phuber)
    if not (math.isfinite(args.theta_min) and math.isfinite(args.theta_max)
            and args.theta_min < args.theta_max):
        parser.error(f"--theta-min {args.theta_min:g} --theta-max {args.theta_max:g} is not allowed: "
                     "they must be finite with theta-min < theta-max")
    span = args.theta_max - args.theta_min
    if not (args.theta_step > 0 and math.isfinite(args.theta_step)):
        parser.error(f"--theta-step {args.theta_step:g} is not allowed: it must be a finite number > 0")
    if abs(span / args.theta_step - round(span / args.theta_step)) > 1e-6:
        parser.error(f"--theta-step {args.theta_step:g} is not allowed: theta-max - theta-min = {span:g} "
                     "must be a whole multiple of it")

    x, y = make_data(np.random.default_rng(args.seed))
    theta = theta_grid(args.theta_min, args.theta_max, args.theta_step)
    curves = {}
    for name, (tau, loss) in with_taus(args.tau_huber, args.tau_phuber).items():
        for outliers, risk in risk_curves(theta, x, y, loss).items():
            curves[name, "" if tau is None else tau, outliers] = risk
    config = {"seed": args.seed, "theta_min": args.theta_min, "theta_max": args.theta_max,
              "theta_step": args.theta_step, "n_inliers": 2 * N_INLIERS, "n_outliers": 2 * N_OUTLIERS,
              **versions("numpy", "scipy")}
    rows = [{"theta": t, "loss": name, "tau": tau, "outliers": outliers, "risk": r, **config}
            for (name, tau, outliers), risk in curves.items() for t, r in zip(theta, risk)]
    best = minimisers(theta, curves)

    os.makedirs(args.out, exist_ok=True)
    write_csv(os.path.join(args.out, "ding.csv"), rows)
    write_csv(os.path.join(args.out, "ding_minimisers.csv"), [{**b, **config} for b in best])
    if not args.no_plot:
        plot(theta, curves, args.out)
    print(f"minimiser of the empirical risk on theta in [{args.theta_min:g}, {args.theta_max:g}], "
          f"step {args.theta_step:g}")
    print(f"{'loss':<20} {'tau':>5} {'outliers':>8} {'theta*':>7} {'risk':>8}")
    for b in best:
        tau = "" if b["tau"] == "" else f"{b['tau']:g}"
        print(f"{b['loss']:<20} {tau:>5} {'with' if b['outliers'] else 'without':>8} {b['theta_star']:7g}"
              f" {b['risk_min']:8.4f}{'  (largest theta)' if b['at_largest_theta'] else ''}")


if __name__ == "__main__":
    main()
