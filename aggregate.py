"""Tables and figures of the report from the result files of the training and synthetic scripts.

    python aggregate.py                        # reads results/, writes results/tables and results/figures
    python aggregate.py --results results/quick

For each dataset found in the summaries (OUT/**/summary.csv, one row per finished run):
  tables/<dataset>.{md,tex,csv}          the report's Tables 1-2: rows losses, columns rho, cells
                                         mean +- standard error over trials (n shown when below
                                         --trials), best cell per column in bold
  tables/<dataset>_comparison.{md,csv}   ours against the report's and the original paper's numbers
                                         (reference_results.csv), with differences
  tables/<dataset>_paired.{md,csv}       each partially Huberised loss minus its base loss on the same
                                         seeds: mean difference and 95% confidence interval
  figures/<dataset>_accuracy.{png,pdf}   test accuracy against rho, one line per loss, published
                                         values as markers (the report's Figures 2-3)
  figures/<dataset>_curves.{png,pdf}     test accuracy per epoch, one panel per rho (epochs.csv)
  figures/<dataset>_memorisation.{png,pdf} share of corrupted training samples fitted, per epoch
  figures/<dataset>_tau_sweep.{png,pdf}  test accuracy against tau per rho, where runs vary tau
plus tables/tau_selection.md when runs held out noisy validation data (--val-split), and the
synthetic experiments' summaries and figures when OUT/synthetic holds them. Missing cells show
as a dash; malformed or truncated files are reported by name and skipped.

    python aggregate.py --results results/tuning --choose-tau --dataset mnist --loss phuber_ce

prints the tau with the best final noisy-validation accuracy at the highest noise rate (the
original paper's protocol; test accuracy is never read).
"""
import argparse
import csv
import glob
import math
import os
import shutil
import sys
from collections import defaultdict

import numpy as np
from scipy import stats

from training import save_figure, write_atomic, write_csv

HERE = os.path.dirname(os.path.abspath(__file__))
LOSS_ORDER = ["ce", "linear", "gce", "phuber_ce", "phuber_gce", "sce", "nce_rce"]
LOSS_NAMES = {"ce": "CE", "linear": "Linear", "gce": "GCE", "phuber_ce": "PHuber-CE", "phuber_gce": "PHuber-GCE",
              "sce": "SCE", "nce_rce": "NCE+RCE"}
BASE_LOSS = {"phuber_ce": "ce", "phuber_gce": "gce"}
DEFAULT_Q = 0.7
# Columns that identify a loss setting (rows of a table) and the experiment grid (columns, trials).
LOSS_KEYS = ["loss", "tau", "q", "alpha", "beta", "clip_norm", "clip_mode"]
GRID_KEYS = ["dataset", "rho", "seed"]
# Everything else a summary row records about its configuration: runs are only pooled when these agree.
NOT_SETTINGS = set(LOSS_KEYS + GRID_KEYS) | {
    "run", "step", "train_loss", "train_acc", "train_clean_acc", "memorised", "corrupted_clean_acc", "test_loss",
    "test_nll", "test_ece", "test_acc", "val_acc", "val_clean_acc", "clipped_clean", "clipped_corrupted",
    "grad_norm_clean", "grad_norm_corrupted", "epoch_seconds", "images_per_second", "train_size", "val_size",
    "test_size", "flip_rate", "label_hash", "wall_seconds", "device", "device_name", "python", "torch",
    "torchvision", "numpy", "finished"}
REQUIRED = ["run", "dataset", "loss", "rho", "seed", "test_acc"]


def warn(message):
    print(f"aggregate.py: {message}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# Reading.

def number(value):
    return float(value) if value not in (None, "") else None


def read_rows(path, required, numeric=()):
    """Rows of a CSV, or None if the file is malformed; bad rows are reported and dropped."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                warn(f"skipping {path}: no column {', '.join(missing)}")
                return None
            rows = []
            for line, row in enumerate(reader, start=2):
                try:
                    if None in row or any(row[c] in (None, "") for c in required):
                        raise ValueError("truncated or empty required field")
                    for c in numeric:
                        float(row[c])
                    rows.append(row)
                except ValueError as e:
                    warn(f"skipping {path} line {line}: {e}")
            return rows
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        warn(f"skipping {path}: {e}")
        return None


def find_summaries(root):
    """summary*.csv under root, not descending into other results roots (quick/, tuning/)."""
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [s for s in subfolders if s not in ("quick", "tuning", "runs", "tables", "figures", "logs")]
        found += [os.path.join(folder, f) for f in sorted(files) if f.startswith("summary") and f.endswith(".csv")]
    return found


def load_runs(root):
    """One row per run (the newest where several files hold the same run), as read."""
    runs = {}
    for path in find_summaries(root):
        for row in read_rows(path, REQUIRED, ["rho", "seed", "test_acc"]) or []:
            if row["run"] not in runs or row.get("finished", "") >= runs[row["run"]].get("finished", ""):
                runs[row["run"]] = row
    return list(runs.values())


def load_epochs(root, run):
    path = os.path.join(root, "runs", run, "epochs.csv")
    if not os.path.exists(path):
        return None
    return read_rows(path, ["epoch", "test_acc"], ["epoch", "test_acc"])


# ---------------------------------------------------------------------------------------------
# Grouping and statistics.

def setting_of(row):
    return tuple(sorted((k, v) for k, v in row.items() if k not in NOT_SETTINGS and v not in ("", None)))


def loss_key(row):
    key = {k: row.get(k, "") or "" for k in LOSS_KEYS}
    if not key["clip_norm"]:
        key["clip_mode"] = ""  # the mode means nothing without clipping
    return tuple(key[k] for k in LOSS_KEYS)


def loss_label(key, tex=False):
    loss, tau, q, alpha, beta, clip, mode = key
    label = LOSS_NAMES.get(loss, loss)
    t = r"$\tau$" if tex else "τ"
    if tau:
        label += f" {t}={float(tau):g}"
    if q and (loss not in ("gce", "phuber_gce") or float(q) != DEFAULT_Q):
        label += f" q={float(q):g}"
    if alpha or beta:
        label += f" α={float(alpha):g} β={float(beta):g}" if not tex else rf" $\alpha$={float(alpha):g} $\beta$={float(beta):g}"
    if clip:
        label += f" + {'per-example ' if mode == 'per-example' else ''}clipping ({float(clip):g})"
    return label


def loss_sort(key):
    loss, tau, q, alpha, beta, clip, mode = key
    return (LOSS_ORDER.index(loss) if loss in LOSS_ORDER else len(LOSS_ORDER), loss, bool(clip), mode,
            float(clip or 0), float(tau or 0), float(q or 0), float(alpha or 0), float(beta or 0))


def mean_se(values):
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return None, None
    se = values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else None
    return float(values.mean()), se


def describe_settings(settings):
    """Name the settings that differ between groups of runs of one dataset (for row labels)."""
    if len(settings) <= 1:
        return {s: "" for s in settings}
    keys = sorted({k for s in settings for k, _ in s})
    differing = [k for k in keys if len({dict(s).get(k) for s in settings}) > 1]
    return {s: " [" + ", ".join(f"{k}={dict(s).get(k, '-')}" for k in differing) + "]" for s in settings}


def build_table(rows):
    """{(setting, loss_key): {rho: [values by seed]}} and the sorted rho values, for one dataset."""
    cells = defaultdict(lambda: defaultdict(dict))
    for row in rows:
        cells[(setting_of(row), loss_key(row))][float(row["rho"])][int(row["seed"])] = float(row["test_acc"])
    rhos = sorted({rho for per_rho in cells.values() for rho in per_rho})
    return cells, rhos


# ---------------------------------------------------------------------------------------------
# Writing.

def fmt_cell(mean, se, n, expected):
    if mean is None:
        return "-"
    text = f"{mean:.1f}" + (f" ± {se:.1f}" if se is not None else "")
    return text + (f" (n={n})" if n < expected else "")


def write_text(path, text):
    write_atomic(path, lambda f: f.write(text))


def dataset_table(dataset, rows, out, expected, chosen):
    """The report's table for one dataset, as Markdown, LaTeX and CSV. Returns the table rows.

    chosen: {(dataset, loss): tau} picked on noisy validation data; those rows get a dagger.
    """
    cells, rhos = build_table(rows)
    labels = describe_settings({setting for setting, _ in cells})
    order = sorted(cells, key=lambda sk: (loss_sort(sk[1]), sk[0]))
    dagger = lambda key: " †" if key[1] and not key[5] and chosen.get((dataset, key[0])) == float(key[1]) else ""  # noqa
    table = []
    for setting, key in order:
        entry = dict(label=loss_label(key) + labels[setting] + dagger(key),
                     tex=loss_label(key, tex=True) + labels[setting] + dagger(key).replace("†", r"$\dagger$"),
                     key=key, cells={})
        for rho in rhos:
            values = list(cells[(setting, key)].get(rho, {}).values())
            mean, se = mean_se(values)
            entry["cells"][rho] = (mean, se, len(values))
        table.append(entry)
    best = {rho: max((e["cells"][rho][0] for e in table if e["cells"][rho][0] is not None), default=None)
            for rho in rhos}
    is_best = lambda e, rho: e["cells"][rho][0] is not None and e["cells"][rho][0] == best[rho]  # noqa: E731

    head = "| Loss | " + " | ".join(f"ρ = {rho:g}" for rho in rhos) + " |"
    md = [f"# {dataset}: test accuracy (%), mean ± standard error over trials (n shown when below {expected})", ""]
    if any(r.get("limit_train") or r.get("limit_test") for r in rows):
        md += ["**Smoke runs on a subset of the data (--limit-train / --limit-test, e.g. run_all.sh --quick): "
               "these numbers check the pipeline and are not results.**", ""]
    md += [head, "|---" * (len(rhos) + 1) + "|"]
    for e in table:
        text = [fmt_cell(*e["cells"][rho], expected) for rho in rhos]
        text = [f"**{t}**" if is_best(e, rho) else t for t, rho in zip(text, rhos)]
        md.append(f"| {e['label']} | " + " | ".join(text) + " |")
    if any("†" in e["label"] for e in table):
        md += ["", "† τ chosen by final noisy-validation accuracy at the highest noise rate (tables/tau_selection.md)."]
    write_text(os.path.join(out, "tables", f"{dataset}.md"), "\n".join(md) + "\n")

    tex = [r"\begin{tabular}{l" + "c" * len(rhos) + "}", r"\toprule",
           "Loss & " + " & ".join(rf"$\rho = {rho:g}$" for rho in rhos) + r" \\", r"\midrule"]
    for e in table:
        text = [fmt_cell(*e["cells"][rho], expected).replace("±", r"$\pm$") for rho in rhos]
        text = [rf"\textbf{{{t}}}" if is_best(e, rho) else t for t, rho in zip(text, rhos)]
        tex.append(f"{e['tex']} & " + " & ".join(text) + r" \\")
    tex += [r"\bottomrule", r"\end{tabular}"]
    write_text(os.path.join(out, "tables", f"{dataset}.tex"), "\n".join(tex) + "\n")

    flat = [dict(dataset=dataset, label=e["label"], **dict(zip(LOSS_KEYS, e["key"])), rho=rho,
                 mean=e["cells"][rho][0], se=e["cells"][rho][1], n=e["cells"][rho][2], best=is_best(e, rho))
            for e in table for rho in rhos]
    write_csv(os.path.join(out, "tables", f"{dataset}.csv"), flat,
              ["dataset", "label"] + LOSS_KEYS + ["rho", "mean", "se", "n", "best"])
    return table, rhos


def load_reference(path):
    refs = defaultdict(dict)
    for row in read_rows(path, ["source", "dataset", "loss", "rho", "mean"], ["rho", "mean"]) or []:
        key = (row["dataset"], row["loss"], number(row["tau"]), number(row["q"]), number(row["clip_norm"]),
               float(row["rho"]))
        refs[key][row["source"]] = (float(row["mean"]), number(row["pm"]))
    return refs


def reference_key(dataset, key, rho):
    loss, tau, q, _, _, clip, mode = key
    if mode == "per-example":
        return None
    return (dataset, loss, number(tau), number(q) if loss in ("gce", "phuber_gce") else None, number(clip), rho)


def comparison(dataset, table, rhos, refs, out):
    rows = []
    for e in table:
        for rho in rhos:
            ref = refs.get(reference_key(dataset, e["key"], rho), {})
            mean, se, n = e["cells"][rho]
            report, original = ref.get("reproduction"), ref.get("original")
            if mean is None and not ref:
                continue
            diff = lambda r: None if mean is None or r is None else round(mean - r[0], 2)  # noqa: E731
            rows.append(dict(loss=e["label"], rho=rho, ours=None if mean is None else round(mean, 2),
                             ours_se=None if se is None else round(se, 2), n=n,
                             report=report and report[0], report_se=report and report[1],
                             original=original and original[0], ours_minus_report=diff(report),
                             ours_minus_original=diff(original)))
    if not any(r["report"] is not None or r["original"] is not None for r in rows):
        return
    write_csv(os.path.join(out, "tables", f"{dataset}_comparison.csv"), rows, list(rows[0]))
    md = [f"# {dataset}: ours against the published test accuracies (%)", "",
          "| Loss | ρ | ours | report | original | ours − report | ours − original |", "|---" * 7 + "|"]
    for r in rows:
        ours = fmt_cell(r["ours"], r["ours_se"], r["n"], 0) if r["ours"] is not None else "-"
        report = "-" if r["report"] is None else f"{r['report']:.1f} ± {r['report_se']:.1f}"
        original = "-" if r["original"] is None else f"{r['original']:.1f}"
        signed = lambda v: "-" if v is None else f"{v:+.1f}"  # noqa: E731
        md.append(f"| {r['loss']} | {r['rho']:g} | {ours} | {report} | {original} | "
                  f"{signed(r['ours_minus_report'])} | {signed(r['ours_minus_original'])} |")
    write_text(os.path.join(out, "tables", f"{dataset}_comparison.md"), "\n".join(md) + "\n")


def paired_differences(dataset, rows, out):
    """Each partially Huberised loss minus its base loss on the same seeds, per rho: 95% t-interval."""
    by = defaultdict(dict)
    for row in rows:
        by[(setting_of(row), loss_key(row), float(row["rho"]))][int(row["seed"])] = float(row["test_acc"])
    result = []
    for (setting, key, rho), ours in sorted(by.items(), key=lambda kv: (loss_sort(kv[0][1]), kv[0][2])):
        base_loss = BASE_LOSS.get(key[0])
        if base_loss is None or key[5]:
            continue
        base_key = (base_loss, "", key[2] if base_loss == "gce" else "", "", "", "", key[6])
        base = by.get((setting, base_key, rho), {})
        seeds = sorted(set(ours) & set(base))
        if not seeds:
            continue
        diffs = np.array([ours[s] - base[s] for s in seeds])
        mean, low, high = paired_interval(diffs)
        result.append(dict(loss=loss_label(key), base=loss_label(base_key), rho=rho, n=len(seeds),
                           mean_diff=round(mean, 3), ci_low=low, ci_high=high))
    if not result:
        return
    write_csv(os.path.join(out, "tables", f"{dataset}_paired.csv"), result, list(result[0]))
    md = [f"# {dataset}: partially Huberised loss minus its base loss, same seeds (test accuracy points)", "",
          "| Loss | base | ρ | n | mean difference | 95% CI |", "|---" * 6 + "|"]
    for r in result:
        ci = "-" if r["ci_low"] is None else f"[{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]"
        md.append(f"| {r['loss']} | {r['base']} | {r['rho']:g} | {r['n']} | {r['mean_diff']:+.2f} | {ci} |")
    write_text(os.path.join(out, "tables", f"{dataset}_paired.md"), "\n".join(md) + "\n")


def paired_interval(diffs, level=0.95):
    """Mean of paired differences and its t-interval (None bounds with a single pair)."""
    diffs = np.asarray(diffs, dtype=float)
    mean = float(diffs.mean())
    if len(diffs) < 2:
        return mean, None, None
    half = stats.t.ppf((1 + level) / 2, len(diffs) - 1) * diffs.std(ddof=1) / math.sqrt(len(diffs))
    return mean, round(mean - half, 3), round(mean + half, 3)


# ---------------------------------------------------------------------------------------------
# Model selection on noisy validation data (the original paper's protocol for tau).

def choose_tau(rows, dataset, loss, candidates=None):
    """The tau whose runs have the best mean final noisy-validation accuracy at the highest rho.

    Reads only val_acc: the test set never takes part in the choice. With `candidates`, every one
    of them must have a run, or there is no choice yet (None).
    """
    runs = [r for r in rows if r["dataset"] == dataset and r["loss"] == loss and r.get("val_acc") not in ("", None)
            and r.get("tau") not in ("", None)]
    if not runs:
        return None, {}
    top = max(float(r["rho"]) for r in runs)
    by_tau = defaultdict(list)
    for r in runs:
        if float(r["rho"]) == top:
            by_tau[float(r["tau"])].append(float(r["val_acc"]))
    scores = {tau: float(np.mean(v)) for tau, v in by_tau.items()}
    if candidates and not set(candidates) <= set(scores):
        return None, scores
    return max(sorted(scores), key=lambda tau: scores[tau]), scores


def tau_choices(rows):
    """{(dataset, loss): tau} for every partially Huberised loss with noisy-validation runs."""
    choices = {}
    for dataset, loss in sorted({(r["dataset"], r["loss"]) for r in rows if r["loss"] in BASE_LOSS}):
        tau, _ = choose_tau(rows, dataset, loss)
        if tau is not None:
            choices[(dataset, loss)] = tau
    return choices


def tau_selection_table(validation_rows, rows, out):
    """Which tau the protocol chose, on what evidence, and the test accuracy the grid then got."""
    lines = []
    for (dataset, loss), tau in tau_choices(validation_rows).items():
        _, scores = choose_tau(validation_rows, dataset, loss)
        listed = ", ".join(f"τ={t:g}: {s:.1f}%" for t, s in sorted(scores.items()))
        test = defaultdict(list)
        for r in rows:
            if (r["dataset"], r["loss"], number(r.get("tau")), r.get("clip_norm")) == (dataset, loss, tau, ""):
                test[float(r["rho"])].append(float(r["test_acc"]))
        results = ", ".join(f"ρ={rho:g}: {np.mean(v):.1f}% (n={len(v)})" for rho, v in sorted(test.items())) or "-"
        lines.append(f"| {dataset} | {LOSS_NAMES[loss]} | {tau:g} | {listed} | {results} |")
    if lines:
        md = ["# τ chosen by final noisy-validation accuracy at the highest noise rate (test data unused)", "",
              "| dataset | loss | chosen τ | noisy-validation accuracy per τ | test accuracy with the chosen τ |",
              "|---|---|---|---|---|"] + lines
        write_text(os.path.join(out, "tables", "tau_selection.md"), "\n".join(md) + "\n")


# ---------------------------------------------------------------------------------------------
# Figures.

def accuracy_figure(dataset, table, rhos, refs, out, plt):
    fig, ax = plt.subplots(figsize=(6, 4.2))
    published = False
    for i, e in enumerate(table):
        color = f"C{i % 10}"
        xs = [rho for rho in rhos if e["cells"][rho][0] is not None]
        ys = [e["cells"][rho][0] for rho in xs]
        errs = [e["cells"][rho][1] or 0 for rho in xs]
        ax.errorbar(xs, ys, yerr=errs, color=color, marker="o", ms=4, capsize=3, label=e["label"])
        for source, marker in (("reproduction", "s"), ("original", "x")):
            pts = [(rho, refs[k][source][0]) for rho in rhos
                   if (k := reference_key(dataset, e["key"], rho)) in refs and source in refs[k]]
            if pts:
                published = True
                ax.scatter(*zip(*pts), color=color, marker=marker, s=30, facecolors="none" if marker == "s" else color)
    title = f"{dataset}: test accuracy, mean ± s.e. over trials"
    if published:
        ax.scatter([], [], color="gray", marker="s", facecolors="none", label="report (published)")
        ax.scatter([], [], color="gray", marker="x", label="original paper (published)")
        title = f"{dataset}: ours (lines) and published (markers)"
    ax.set(xlabel="label noise ρ", ylabel="test accuracy (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    save_figure(fig, os.path.join(out, "figures", f"{dataset}_accuracy"))
    plt.close(fig)


def curve_figures(dataset, rows, root, out, plt):
    """Per-epoch test accuracy and memorisation, mean over seeds, one panel per rho."""
    curves = defaultdict(list)
    for row in rows:
        epochs = load_epochs(root, row["run"])
        if epochs:
            curves[(loss_key(row), float(row["rho"]))].append(epochs)
    if not curves:
        return
    rhos = sorted({rho for _, rho in curves})
    keys = sorted({key for key, _ in curves}, key=loss_sort)
    for column, name, ylabel in (("test_acc", "curves", "test accuracy (%)"),
                                 ("memorised", "memorisation", "corrupted samples fitted (%)")):
        panels = [rho for rho in rhos if column != "memorised" or rho > 0]  # rho = 0: nothing corrupted
        if not panels:
            continue
        fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), squeeze=False, sharey=True)
        drawn = False
        for ax, rho in zip(axes[0], panels):
            for i, key in enumerate(keys):
                series = [[number(r.get(column)) for r in run] for run in curves.get((key, rho), [])]
                series = [s for s in series if s and all(v is not None for v in s)]
                if not series:
                    continue
                length = min(len(s) for s in series)
                ax.plot(range(1, length + 1), np.mean([s[:length] for s in series], axis=0), color=f"C{i % 10}",
                        label=loss_label(key))
                drawn = True
            ax.set(title=f"ρ = {rho:g}", xlabel="epoch")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel(ylabel)
        if drawn:
            axes[0][-1].legend(fontsize=7)
            fig.suptitle(f"{dataset}: {ylabel} per epoch (mean over trials)", y=1.03)
            save_figure(fig, os.path.join(out, "figures", f"{dataset}_{name}"))
        plt.close(fig)


def tau_sweep_figure(dataset, rows, out, plt):
    """Test accuracy against tau (log axis), per rho, for each partially Huberised loss."""
    sweeps = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if row["loss"] in BASE_LOSS and row.get("tau") and not row.get("clip_norm"):
            sweeps[(row["loss"], float(row["rho"]))][float(row["tau"])].append(float(row["test_acc"]))
    losses_swept = sorted({loss for (loss, _), by_tau in sweeps.items() if len(by_tau) > 1})
    if not losses_swept:
        return
    fig, axes = plt.subplots(1, len(losses_swept), figsize=(5 * len(losses_swept), 3.6), squeeze=False)
    for ax, loss in zip(axes[0], losses_swept):
        for i, rho in enumerate(sorted(rho for (l, rho) in sweeps if l == loss)):
            by_tau = sweeps[(loss, rho)]
            taus = sorted(by_tau)
            stats_ = [mean_se(by_tau[t]) for t in taus]
            ax.errorbar(taus, [m for m, _ in stats_], yerr=[s or 0 for _, s in stats_], marker="o", capsize=3,
                        color=f"C{i}", label=f"ρ = {rho:g}")
        ax.set_xscale("log")
        ax.set(xlabel="τ", ylabel="test accuracy (%)", title=f"{dataset}: {LOSS_NAMES[loss]}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    save_figure(fig, os.path.join(out, "figures", f"{dataset}_tau_sweep"))
    plt.close(fig)


def synthetic(root, out):
    """Copy the synthetic experiments' summaries and figures next to the others."""
    folder = os.path.join(root, "synthetic")
    copied = []
    for pattern, target in (("*_summary.csv", "tables"), ("*minimisers.csv", "tables"), ("*.png", "figures"),
                            ("*.pdf", "figures")):
        for path in sorted(glob.glob(os.path.join(folder, pattern))):
            with open(path, "rb") as src:
                write_atomic(os.path.join(out, target, "synthetic_" + os.path.basename(path)),
                             lambda f: shutil.copyfileobj(src, f), binary=True)
            copied.append(os.path.basename(path))
    return copied


# ---------------------------------------------------------------------------------------------

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default="results", help="results folder to read (default: %(default)s)")
    p.add_argument("--out", help="where tables/ and figures/ go (default: the --results folder)")
    p.add_argument("--trials", type=int, default=3, help="expected trials per cell; fewer are flagged (default: 3)")
    p.add_argument("--reference", default=os.path.join(HERE, "reference_results.csv"),
                   help="published numbers (default: reference_results.csv beside this script)")
    p.add_argument("--no-plot", action="store_true", help="tables only")
    p.add_argument("--choose-tau", action="store_true", help="print the tau chosen on noisy validation data "
                   "for --dataset and --loss, and exit")
    p.add_argument("--dataset", help="with --choose-tau")
    p.add_argument("--loss", help="with --choose-tau")
    p.add_argument("--candidates", help="with --choose-tau: comma-separated taus that must all have been run")
    args = p.parse_args(argv)
    if not os.path.isdir(args.results):
        p.error(f"--results {args.results!r} is not a folder")
    out = args.out or args.results
    rows = load_runs(args.results)

    if args.choose_tau:
        candidates = [float(t) for t in args.candidates.split(",")] if args.candidates else None
        tau, scores = choose_tau(rows, args.dataset, args.loss, candidates)
        if tau is None:
            warn(f"no tau chosen for {args.dataset} {args.loss}: validation runs in {args.results} cover "
                 f"tau {sorted(scores) or 'none'}, expected {candidates or 'some'}")
            return 1
        print(f"{tau:g}")
        return 0

    plt = None
    if not args.no_plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    refs = load_reference(args.reference) if os.path.exists(args.reference) else {}
    # tau tuning runs (run_all.sh --tune-tau) live in their own results folder
    tuning = os.path.join(args.results, "tuning")
    validation_rows = load_runs(tuning) if os.path.isdir(tuning) else rows
    chosen = tau_choices(validation_rows)
    written = []
    for dataset in sorted({r["dataset"] for r in rows}):
        ds_rows = [r for r in rows if r["dataset"] == dataset]
        table, rhos = dataset_table(dataset, ds_rows, out, args.trials, chosen)
        comparison(dataset, table, rhos, refs, out)
        paired_differences(dataset, ds_rows, out)
        if plt:
            accuracy_figure(dataset, table, rhos, refs, out, plt)
            curve_figures(dataset, ds_rows, args.results, out, plt)
            tau_sweep_figure(dataset, ds_rows, out, plt)
        written.append(f"{dataset} ({len(ds_rows)} runs)")
    tau_selection_table(validation_rows, rows, out)
    copied = synthetic(args.results, out)
    if not written and not copied:
        warn(f"no results found under {args.results}")
        return 1
    print(f"aggregate.py: tables in {os.path.join(out, 'tables')}, figures in {os.path.join(out, 'figures')}: "
          + ", ".join(written + ([f"synthetic ({len(copied)} files)"] if copied else [])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
