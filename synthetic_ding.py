"""Ding (2013) outliers experiment: report Figure 1c.

Empirical risk of a 1-D linear model (score = theta x) over a grid of theta, for the logistic loss,
the Huberised logistic loss (tau = 0.1) and the partially Huberised logistic loss (tau = 1.1), on
10,000 separable inliers (N(+-1, 1), labelled +-1) with and without 50 mislabelled outliers
(25 from N(-200, 1) labelled +1, 25 from N(200, 1) labelled -1); report section 4.2.

    python synthetic_ding.py                # the report's setting: one draw, ~1.3 s on 2 CPU cores
    python synthetic_ding.py --seeds 200    # 200 independent draws: how much theta* depends on the sample

writes results/synthetic/ding.csv (risk per theta, loss and outliers yes/no, of the first draw),
ding_minimisers.csv (theta* of every draw), ding_minimiser_summary.csv (their spread over the draws),
with --seeds also ding_band.csv (median and 5-95% band of the risk over the draws), and
ding.{png,pdf} (solid: without outliers, dashed: with outliers; a band over several draws).

Expected (report): without outliers every loss is minimised at the largest theta of the grid
(theta* = +inf); with outliers the logistic and Huberised minimisers drop to about 0, while the
partially Huberised minimiser stays at the largest theta. Got here (seed 0): theta* = 2 for all three
without outliers; with outliers 0 (logistic), -0.01 (Huberised, whose risk is flat within 1e-5 near
0) and 2 (partially Huberised). The Huberised minimiser with outliers depends on the sample: near
theta = 0 every outlier and inlier lies in its linear region, where the risk's slope is
(tau / N) (sum over outliers of |x| - sum over inliers of y x), two sums of about 10,000 whose
difference has a standard deviation of about 100; --seeds measures how often theta* lands near 0.
"""
import argparse
import math
import os

import numpy as np

from errors import Parser
from margin_losses import COLOURS, LABELS, MARGIN_LOSSES, check_flags, with_taus
from results import pyplot, save_figure, versions, write_csv

N_INLIERS = 5000  # per class
N_OUTLIERS = 25  # per class
OUTLIER_LOCATION = 200.0


def make_data(rng):
    """x and y in {-1, +1}: inliers (+1 class, then -1 class), then the outliers on the wrong side:
    +1 labels at -200, -1 labels at +200."""
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


def draw_curves(seed, theta, tau_huber, tau_phuber):
    """{(loss, tau, outliers): risk per theta} on the data drawn from `seed`."""
    x, y = make_data(np.random.default_rng(seed))
    curves = {}
    for name, (tau, loss) in with_taus(tau_huber, tau_phuber).items():
        for outliers, risk in risk_curves(theta, x, y, loss).items():
            curves[name, "" if tau is None else tau, outliers] = risk
    return curves


def minimisers(theta, curves, draw):
    """Rows (draw, loss, outliers, theta*, min risk); argmin takes the smallest theta on ties."""
    rows = []
    for (name, tau, outliers), risk in curves.items():
        i = int(np.argmin(risk))
        rows.append({"draw": draw, "loss": name, "tau": tau, "outliers": outliers, "theta_star": theta[i],
                     "risk_min": risk[i], "at_largest_theta": bool(i == len(theta) - 1)})
    return rows


def spread(best, near=0.1):
    """Per loss and outliers, over the draws: how often theta* is within `near` of 0 or at the
    largest theta, and the median and 5-95% quantiles of theta*."""
    rows = []
    for name, tau, outliers in dict.fromkeys((b["loss"], b["tau"], b["outliers"]) for b in best):
        sel = [b for b in best if (b["loss"], b["tau"], b["outliers"]) == (name, tau, outliers)]
        stars = np.array([b["theta_star"] for b in sel])
        q05, median, q95 = np.percentile(stars, [5, 50, 95])
        rows.append({"loss": name, "tau": tau, "outliers": outliers, "draws": len(sel),
                     "share_near_zero": float(np.mean(np.abs(stars) <= near + 1e-12)),
                     "share_at_largest_theta": float(np.mean([b["at_largest_theta"] for b in sel])),
                     "theta_star_median": median, "theta_star_q05": q05, "theta_star_q95": q95})
    return rows


def band(draws):
    """{(loss, tau, outliers): (median, 5%, 95%) of the risk per theta over the draws}."""
    return {key: np.percentile([d[key] for d in draws], [50, 5, 95], axis=0) for key in draws[0]}


def plot(theta, draws, best, out):
    """The risk curves of one draw or, over several, their median and 5-95% band, with a rug of
    each draw's minimiser with outliers (what moves from draw to draw is where the flat curves bottom)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for (name, tau, outliers), (median, low, high) in band(draws).items():
        ax.plot(theta, median, color=COLOURS[name], linestyle="--" if outliers else "-")
        if len(draws) > 1:
            ax.fill_between(theta, low, high, color=COLOURS[name], alpha=0.2, linewidth=0)
    for level, name in enumerate(MARGIN_LOSSES if len(draws) > 1 else ()):
        stars = [b["theta_star"] for b in best if b["loss"] == name and b["outliers"]]
        ax.plot(stars, [0.03 + 0.03 * level] * len(stars), "|", color=COLOURS[name], alpha=0.4, ms=8,
                transform=ax.get_xaxis_transform())
    # Two short legends, colour for the loss and line style for the data, instead of six entries.
    taus = {name: tau for name, tau, _ in draws[0]}
    loss_legend = ax.legend([plt.Line2D([], [], color=COLOURS[name]) for name in MARGIN_LOSSES],
                            [LABELS[name] + ("" if taus[name] == "" else f" ($\\tau$ = {taus[name]:g})")
                             for name in MARGIN_LOSSES], loc="upper center", fontsize=8)
    ax.add_artist(loss_legend)
    ax.legend([plt.Line2D([], [], color="black", linestyle=style) for style in ("-", "--")]
              + ([plt.Line2D([], [], color="black", marker="|", ls="none")] if len(draws) > 1 else []),
              ["without outliers", "with outliers"] + (["θ* of each draw, with outliers"] if len(draws) > 1 else []),
              loc="center left", fontsize=8)
    ax.set_xlabel("$\\theta$")
    ax.set_ylabel("Empirical risk")
    over = f", median and 5-95% band over {len(draws)} draws" if len(draws) > 1 else ""
    ax.set_title(f"Ding (2013) outliers: risk of the linear model $\\theta x${over}", fontsize=10 if over else None)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, os.path.join(out, "ding"))
    plt.close(fig)


def main(argv=None):
    parser = Parser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="seed (integer >= 0) of the data; draw d uses seed + d")
    parser.add_argument("--seeds", type=int, default=1,
                        help="independent draws of the data (>= 1); the report's figure is one draw")
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

    check_flags(parser, args.seed, args.tau_huber, args.tau_phuber, args.out)
    if args.seeds < 1:
        parser.error(f"--seeds {args.seeds} is not allowed: it must be an integer >= 1")
    if not -math.inf < args.theta_min < args.theta_max < math.inf:  # nan fails every comparison
        parser.error(f"--theta-min {args.theta_min:g} --theta-max {args.theta_max:g} is not allowed: "
                     "they must be finite with theta-min < theta-max")
    span = args.theta_max - args.theta_min
    if not 0 < args.theta_step < math.inf:
        parser.error(f"--theta-step {args.theta_step:g} is not allowed: it must be a finite number > 0")
    if abs(span / args.theta_step - round(span / args.theta_step)) > 1e-6:
        parser.error(f"--theta-step {args.theta_step:g} is not allowed: theta-max - theta-min = {span:g} "
                     "must be a whole multiple of it")

    theta = theta_grid(args.theta_min, args.theta_max, args.theta_step)
    draws = [draw_curves(args.seed + d, theta, args.tau_huber, args.tau_phuber) for d in range(args.seeds)]
    config = {"seed": args.seed, "seeds": args.seeds, "theta_min": args.theta_min, "theta_max": args.theta_max,
              "theta_step": args.theta_step, "n_inliers": 2 * N_INLIERS, "n_outliers": 2 * N_OUTLIERS,
              **versions("numpy", "scipy")}
    best = [b for d, curves in enumerate(draws) for b in minimisers(theta, curves, args.seed + d)]
    summary = spread(best)

    os.makedirs(args.out, exist_ok=True)
    write_csv(os.path.join(args.out, "ding.csv"),
              [{"theta": t, "loss": name, "tau": tau, "outliers": outliers, "risk": r, **config}
               for (name, tau, outliers), risk in draws[0].items() for t, r in zip(theta, risk)])
    write_csv(os.path.join(args.out, "ding_minimisers.csv"), [{**b, **config} for b in best])
    write_csv(os.path.join(args.out, "ding_minimiser_summary.csv"), [{**s, **config} for s in summary])
    if args.seeds > 1:
        write_csv(os.path.join(args.out, "ding_band.csv"),
                  [{"theta": t, "loss": name, "tau": tau, "outliers": outliers, "risk_median": m, "risk_q05": lo,
                    "risk_q95": hi, **config} for (name, tau, outliers), curves in band(draws).items()
                   for t, m, lo, hi in zip(theta, *curves)])
    if not args.no_plot:
        plot(theta, draws, best, args.out)
    print(f"minimiser theta* of the empirical risk on theta in [{args.theta_min:g}, {args.theta_max:g}], "
          f"step {args.theta_step:g}, over {args.seeds} draw(s) of the data")
    print(f"{'loss':<20} {'tau':>5} {'outliers':>8} {'|theta*|<=0.1':>13} {'median':>7} {'5%':>6} {'95%':>6}"
          f" {'largest':>7}")
    for r in summary:
        tau = "" if r["tau"] == "" else f"{r['tau']:g}"
        print(f"{r['loss']:<20} {tau:>5} {'with' if r['outliers'] else 'without':>8}"
              f" {100 * r['share_near_zero']:12.0f}% {r['theta_star_median']:7g} {r['theta_star_q05']:6g}"
              f" {r['theta_star_q95']:6g} {100 * r['share_at_largest_theta']:6.0f}%")


if __name__ == "__main__":
    main()
