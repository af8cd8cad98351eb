"""Long & Servedio synthetic experiment: report Figure 1a (rho = 0.45) and Figure 1b (rho = 0.2).

A linear classifier without bias is fit on 1000 noisy samples of a six-Gaussian mixture in 2-D
(report section 4.1) with the logistic loss, the Huberised logistic loss (tau = sigmoid(-1)) and the
partially Huberised logistic loss (tau = 1 + 1/e), by SLSQP from zero for at most 100 iterations, and
scored on 500 clean test samples; 500 trials per noise rate, each reproducible alone.

    python synthetic_long_servedio.py                     # the paper's setting, ~8.5 s on 2 CPU cores
    python synthetic_long_servedio.py --optimizer lbfgs   # same data, optimised to convergence, ~9 s

writes results/synthetic/long_servedio.csv (one row per rho, trial and loss),
long_servedio_summary.csv and long_servedio.{png,pdf} (box plots of test accuracy, one panel per rho).

Expected (report): at rho = 0.2 the partially Huberised loss classifies the test set perfectly while
logistic and Huberised are at chance (~50%); at rho = 0.45 the report could not match the original
figure exactly. Got here (seed 0, mean test accuracy logistic / Huberised / partially Huberised):
rho = 0.2: 53.4 / 50.7 / 100.0 %; rho = 0.45: 67.4 / 74.1 / 94.4 %, because SLSQP's tolerance stops
logistic and Huberised early there (never the 100-iteration cap); with --optimizer lbfgs:
62.2 / 53.7 / 92.6 %.
"""
import argparse
import ctypes
import math
import multiprocessing
import os
import signal

# One BLAS thread, set before numpy loads OpenBLAS: the optimisers' 2x2 linear algebra gains nothing
# from threads, and on a busy 2-core machine L-BFGS-B ran ~40x slower with them. Parallelism comes
# from --workers processes instead.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import numpy as np  # noqa: E402 (after the line above on purpose)
from scipy.optimize import minimize  # noqa: E402

from errors import Parser  # noqa: E402
from margin_losses import COLOURS, LABELS, MARGIN_LOSSES, check_flags, with_taus  # noqa: E402
from results import pyplot, save_figure, versions, write_csv  # noqa: E402

GAMMA = 1 / 24
SIGMA = 0.01
# +-(1, 0) large margin, +-(gamma, 5 gamma) pullers, +-(gamma, -gamma) penalizers (weight 1/4 each).
MEANS = np.array([[1, 0], [-1, 0], [GAMMA, 5 * GAMMA], [-GAMMA, -5 * GAMMA], [GAMMA, -GAMMA], [-GAMMA, GAMMA]])
WEIGHTS = np.array([1 / 8, 1 / 8, 1 / 8, 1 / 8, 1 / 4, 1 / 4])
N_TRAIN, N_TEST = 1000, 500
TAU_HUBER = 1 / (1 + math.e)  # sigmoid(-1), the value the authors used (the paper misprints 1.0)
TAU_PHUBER = 1 + math.exp(-1)  # the paper misprints 2.0
# "Run to convergence": the cap is never the reason to stop, only a vanishing gradient is.
LBFGS_OPTIONS = {"maxiter": 10_000, "ftol": 0.0, "gtol": 1e-8}


def make_data(rng, n):
    """n clean samples of the mixture: x (n, 2) and y in {-1, +1} (n,), positive iff x1 >= 0."""
    x = MEANS[rng.choice(len(MEANS), size=n, p=WEIGHTS)] + SIGMA * rng.standard_normal((n, 2))
    return x, np.where(x[:, 0] >= 0, 1.0, -1.0)


def flip_labels(rng, y, rho):
    """Symmetric noise: each label flips independently with probability rho."""
    return np.where(rng.random(len(y)) < rho, -y, y)


def objective(w, yx, loss):
    """Empirical risk mean_i loss(y_i w.x_i) and its gradient in w; yx holds the rows y_i x_i."""
    value, slope = loss(yx @ w, grad=True)
    return value.sum() / len(value), slope @ yx / len(value)  # = value.mean(), bit for bit, without its overhead


def fit(yx, loss, optimizer, max_iter):
    """Minimise the empirical risk from w = 0; returns scipy's OptimizeResult."""
    method, options = ("SLSQP", {"maxiter": max_iter}) if optimizer == "slsqp" else ("L-BFGS-B", LBFGS_OPTIONS)
    # jac=True: value and gradient come from one pass over the data
    return minimize(objective, np.zeros(2), args=(yx, loss), jac=True, method=method, options=options)


def accuracy(w, x, y):
    """Share of samples with sign(w.x) == y; a score of exactly 0 counts as positive, like x1 = 0."""
    return float(np.mean(np.where(x @ w >= 0, 1.0, -1.0) == y))


def run_trial(seed, rho, trial, taus, solver):
    """One trial: draw data once, fit each loss on it; one result row per loss. taus: (tau_huber,
    tau_phuber); solver: (optimizer, max_iter)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, round(rho * 1e6), trial]))
    x, y_clean = make_data(rng, N_TRAIN)
    y = flip_labels(rng, y_clean, rho)
    x_test, y_test = make_data(rng, N_TEST)  # test set is clean
    yx = y[:, None] * x
    rows = []
    for name, (tau, loss) in with_taus(*taus).items():
        res = fit(yx, loss, *solver)
        rows.append({"rho": rho, "trial": trial, "loss": name, "tau": "" if tau is None else tau,
                     "train_acc": accuracy(res.x, x, y), "clean_train_acc": accuracy(res.x, x, y_clean),
                     "test_acc": accuracy(res.x, x_test, y_test), "w1": res.x[0], "w2": res.x[1],
                     "objective": float(res.fun), "iterations": res.nit, "converged": bool(res.success),
                     "flipped": float(np.mean(y != y_clean))})
    return rows


def run_trials(jobs, workers, meanwhile=None):
    """run_trial over job tuples, in order; every trial seeds itself, so workers change nothing.
    meanwhile(), if given, runs in this process while the workers compute."""
    if workers == 1:
        rows = [row for job in jobs for row in run_trial(*job)]
        meanwhile and meanwhile()
        return rows
    chunk = math.ceil(len(jobs) / (32 * workers))  # small chunks: no worker idles while another finishes
    with multiprocessing.get_context("fork").Pool(workers, die_with_parent, (os.getpid(),)) as pool:
        pending = pool.starmap_async(run_trial, jobs, chunksize=chunk)
        meanwhile and meanwhile()
        return [row for rows in pending.get() for row in rows]


def die_with_parent(parent):
    """Pool worker initialiser: the worker ends when the main process does, however that ends (a
    killed main process would otherwise leave its workers computing at full CPU)."""
    try:  # Linux: the kernel sends SIGKILL to this worker when its parent dies
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # elsewhere: only the check below
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def summarise(rows, rhos):
    """Test accuracy statistics per (rho, loss), in the order of rhos and MARGIN_LOSSES."""
    summary = []
    for rho in rhos:
        for name in MARGIN_LOSSES:
            sel = [r for r in rows if r["rho"] == rho and r["loss"] == name]
            acc = np.array([r["test_acc"] for r in sel])
            q1, median, q3 = np.percentile(acc, [25, 50, 75])
            summary.append({"rho": rho, "loss": name, "tau": sel[0]["tau"], "trials": len(acc),
                            "test_acc_mean": acc.mean(),
                            "test_acc_se": acc.std(ddof=1) / math.sqrt(len(acc)) if len(acc) > 1 else "",
                            "test_acc_q1": q1, "test_acc_median": median, "test_acc_q3": q3,
                            "share_perfect": np.mean(acc == 1.0),
                            "share_converged": np.mean([r["converged"] for r in sel]),
                            "iterations_mean": np.mean([r["iterations"] for r in sel])})
    return summary


def print_summary(summary, optimizer, max_iter):
    print(f"clean test accuracy (%), optimizer {optimizer}, iteration cap {max_iter}")
    print(f"{'rho':>5} {'loss':<20} {'n':>4} {'mean':>6} {'s.e.':>5} {'q1':>6} {'median':>6} {'q3':>6}"
          f" {'=100%':>6} {'conv.':>6} {'iters':>6}")
    for s in summary:
        se = f"{100 * s['test_acc_se']:5.2f}" if s["test_acc_se"] != "" else f"{'':5}"
        stats = " ".join(f"{100 * s[k]:6.1f}" for k in ("test_acc_q1", "test_acc_median", "test_acc_q3"))
        shares = " ".join(f"{100 * s[k]:5.1f}%" for k in ("share_perfect", "share_converged"))
        print(f"{s['rho']:>5g} {s['loss']:<20} {s['trials']:>4} {100 * s['test_acc_mean']:6.1f} {se} {stats}"
              f" {shares} {s['iterations_mean']:6.1f}")


def plot(rows, rhos, optimizer, max_iter, out):
    plt = pyplot()
    taus = {r["loss"]: r["tau"] for r in rows}
    labels = [LABELS[name].replace(" ", "\n") + ("" if taus[name] == "" else f"\n($\\tau$ = {taus[name]:.4g})")
              for name in MARGIN_LOSSES]
    fig, axes = plt.subplots(1, len(rhos), figsize=(3.6 * len(rhos), 3.8), sharey=True, squeeze=False)
    for ax, rho in zip(axes[0], rhos):
        acc = [[r["test_acc"] for r in rows if r["rho"] == rho and r["loss"] == name] for name in MARGIN_LOSSES]
        boxes = ax.boxplot(acc, tick_labels=labels, widths=0.5, patch_artist=True, medianprops={"color": "black"})
        for box, name in zip(boxes["boxes"], MARGIN_LOSSES):
            box.set(facecolor=COLOURS[name], alpha=0.6)
        ax.set_title(f"$\\rho$ = {rho:g} ({len(acc[0])} trials)")
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].set_ylabel("Clean test accuracy")
    fitted = f"SLSQP, at most {max_iter} iterations" if optimizer == "slsqp" else "L-BFGS-B to convergence"
    fig.suptitle(f"Long & Servedio mixture, symmetric label noise: linear model, {fitted}", fontsize=10)
    fig.tight_layout()
    save_figure(fig, os.path.join(out, "long_servedio"))
    plt.close(fig)


def main(argv=None):
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    parser = Parser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--rho", type=float, nargs="+", default=[0.45, 0.2],
                        help="label flip probabilities, each in [0, 0.5); one set of trials and panel each")
    parser.add_argument("--trials", type=int, default=500, help="number of independent trials per rho (>= 1)")
    parser.add_argument("--seed", type=int, default=0, help="base seed (integer >= 0) of every trial")
    parser.add_argument("--tau-huber", type=float, default=TAU_HUBER,
                        help="Huberised loss tau in (0, 1), unitless; the authors' sigmoid(-1) = 1/(1+e)")
    parser.add_argument("--tau-phuber", type=float, default=TAU_PHUBER,
                        help="partially Huberised loss tau > 1, unitless; the authors' 1 + 1/e")
    parser.add_argument("--optimizer", choices=("slsqp", "lbfgs"), default="slsqp",
                        help="slsqp: SLSQP capped at --max-iter iterations (the paper); lbfgs: L-BFGS-B "
                             f"run to convergence (gtol {LBFGS_OPTIONS['gtol']:g}, at most "
                             f"{LBFGS_OPTIONS['maxiter']} iterations)")
    parser.add_argument("--max-iter", type=int, default=100,
                        help="SLSQP iteration cap (>= 1), in iterations; lbfgs ignores it")
    parser.add_argument("--workers", type=int, default=min(8, cpus),
                        help="worker processes (>= 1); results do not depend on it")
    parser.add_argument("--out", default="results/synthetic", help="output folder")
    parser.add_argument("--no-plot", action="store_true", help="skip the figure")
    args = parser.parse_args(argv)

    for rho in args.rho:
        if not 0 <= rho < 0.5:
            parser.error(f"--rho {rho:g} is not allowed: each rho must be in [0, 0.5)")
    if len(set(args.rho)) < len(args.rho):
        parser.error(f"--rho {' '.join(f'{r:g}' for r in args.rho)} repeats a value: give each rho once")
    for flag, value in (("--trials", args.trials), ("--max-iter", args.max_iter),
                        ("--workers", args.workers)):
        if value < 1:
            parser.error(f"{flag} {value} is not allowed: it must be an integer >= 1")
    check_flags(parser, args.seed, args.tau_huber, args.tau_phuber, args.out)

    jobs = [(args.seed, rho, trial, (args.tau_huber, args.tau_phuber), (args.optimizer, args.max_iter))
            for rho in args.rho for trial in range(args.trials)]
    # while the workers fit, this process would wait idle: it imports matplotlib meanwhile
    rows = run_trials(jobs, min(args.workers, len(jobs)), meanwhile=None if args.no_plot else pyplot)
    max_iter = args.max_iter if args.optimizer == "slsqp" else LBFGS_OPTIONS["maxiter"]
    config = {"optimizer": args.optimizer, "max_iter": max_iter, "trials": args.trials, "seed": args.seed,
              "n_train": N_TRAIN, "n_test": N_TEST, **versions("numpy", "scipy")}
    summary = summarise(rows, args.rho)

    os.makedirs(args.out, exist_ok=True)
    write_csv(os.path.join(args.out, "long_servedio.csv"), [{**r, **config} for r in rows])
    write_csv(os.path.join(args.out, "long_servedio_summary.csv"), [{**s, **config} for s in summary])
    if not args.no_plot:
        plot(rows, args.rho, args.optimizer, max_iter, args.out)
    print_summary(summary, args.optimizer, max_iter)
    print(f"wrote {os.path.join(args.out, 'long_servedio.csv')} ({len(rows)} rows)")


if __name__ == "__main__":
    main()
