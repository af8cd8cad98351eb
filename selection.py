"""Choosing on noisy validation data, and the tables of the choices (no torch).

The fair comparison (run_all.sh --tune, docs/tuning.md) trains every candidate of grid.TUNE, for
every trial, with --val-split of the noisy training set held out. For each (dataset, setting, rho,
loss) `choose` takes the candidate of best mean noisy-validation accuracy, at the final epoch and
stopped early; `outcomes` then looks up the test accuracy of the chosen candidate's own runs (nothing
is retrained), the oracle bound and paired differences against CE. The choice reads validation
accuracy only: `choose` is given nothing else. The original paper's protocol for tau (grid.choose_tau)
has its table at the end.
"""
import os
from collections import defaultdict

import catalog
import grid
from tables import (fmt_cell, has_flags, load_epochs, load_runs, loss_key, markdown, mean_se, paired_interval,
                    parse_number, same, setting_of, smoke_banner, write_table)

TIE = 1e-9  # mean accuracies (in points) closer than this are a tie


def noisy_accuracy(clean, rho, classes):
    """Expected accuracy against symmetrically noisy labels of a classifier of accuracy `clean` against
    the true labels (fractions): a (1 - rho) + (1 - a) rho / (C - 1), increasing in a exactly while
    rho < (C - 1) / C (docs/tuning.md)."""
    return rho / (classes - 1) + clean * (1 - rho * classes / (classes - 1))


def clean_accuracy(noisy, rho, classes):
    """The inverse of noisy_accuracy (for rho != (C - 1) / C, where noisy accuracy says nothing)."""
    slope = 1 - rho * classes / (classes - 1)
    if slope == 0:
        raise ValueError(f"rho {rho} = (C - 1) / C for C = {classes}: noisy labels carry no information")
    return (noisy - rho / (classes - 1)) / slope


def candidate_of(row):
    """(family, index) of the grid.TUNE candidate whose loss settings a run has, or None."""
    return next(((family, i) for family in grid.TUNE for i, (_, candidate) in enumerate(family.candidates())
                 if has_flags(loss_key(row), candidate.flags)), None)


def stopped_early(epochs):
    """Index of the epoch of best val_acc in a run's epochs.csv rows, or None without val_acc at every epoch."""
    values = [parse_number(r.get("val_acc")) for r in epochs or ()]
    if not values or None in values:
        return None
    return max(range(len(values)), key=values.__getitem__)  # max returns the first of equals


def choose(scores):
    """(index, None) of the candidate of best mean score, given each one's {seed: validation accuracy} in
    grid.TUNE's order, ties (within TIE) to the first listed; (None, why) if a candidate or trial is missing."""
    missing = [i for i, s in enumerate(scores) if not s]
    if missing:
        return None, f"{len(missing)} of {len(scores)} candidates not run"
    seeds = [sorted(s) for s in scores]
    if any(s != seeds[0] for s in seeds):
        return None, "candidates ran different trials (seeds " + "; ".join(
            ",".join(map(str, s)) for s in dict.fromkeys(map(tuple, seeds))) + ")"
    means = [sum(s.values()) / len(s) for s in scores]
    best = max(means)
    return next(i for i, m in enumerate(means) if m >= best - TIE), None


def runs_of(rows, root):
    """{(dataset, setting, rho, family key): [{seed: run} per candidate]} of the runs under root, each
    with `early` added: its epochs.csv row at the epoch of best noisy-validation accuracy (or None)."""
    groups = defaultdict(dict)
    for row in rows:
        found = candidate_of(row) if row.get("rho") not in ("", None) else None  # human noise: not compared
        if found is None:
            continue
        family, index = found
        epochs = load_epochs(root, row["run"])
        best = stopped_early(epochs)
        row = dict(row, early=None if best is None else epochs[best])
        key = (row["dataset"], setting_of(row), float(row["rho"]), family.key)
        groups[key].setdefault(index, {})[int(row["seed"])] = row
    return {key: [by.get(i, {}) for i in range(len(family_of(key[3]).candidates()))] for key, by in groups.items()}


def family_of(key):
    return next(f for f in grid.TUNE if f.key == key)


def choose_among(runs, early):
    """choose() on the candidates' runs ([{seed: run}] in grid.TUNE order) by their val_acc, final or
    stopped early."""
    scores = [{s: value(r, "val_acc", early) for s, r in by_seed.items()} for by_seed in runs]
    if any(v is None for s in scores for v in s.values()):  # a run without (per-epoch) validation data
        return None, "a run has no noisy-validation accuracy" + (" per epoch" if early else "")
    return choose(scores)


def flags(family, index, dataset):
    """A candidate as the command that trains it, e.g. 'train_mnist.py --loss phuber_ce --tau 2' (the
    script first: a spreadsheet takes a cell that begins with '-' for a formula)."""
    return " ".join([catalog.DATASETS[dataset]["script"], *family.candidates()[index][1].argv()])


def value(run, column, early):
    """A run's column at its final epoch, or at its stopped-early epoch (None if that is unknown)."""
    source = run.get("early") if early else run
    return None if source is None else parse_number(source.get(column))


def outcomes(groups):
    """One record per (dataset, setting, rho, family), in grid.TUNE order: the choices, final and
    stopped early (choice), and the test accuracy of each candidate (curve)."""
    records = []
    for (dataset, setting, rho, key), runs in sorted(groups.items(), key=lambda kv: (
            kv[0][0], kv[0][1], kv[0][2], [f.key for f in grid.TUNE].index(kv[0][3]))):
        family = family_of(key)
        ce = groups.get((dataset, setting, rho, "ce"), [{}])[0]
        record = dict(dataset=dataset, setting=setting, rho=rho, loss=family.label, key=key,
                      candidates=len(runs))
        for early in (False, True):
            record.update(choice(family, runs, *choose_among(runs, early), early=early, ce=ce, dataset=dataset))
        record["curve"] = [dict(value=family.values[i] if family.param else None,
                                **{name: mean_se([v for r in by_seed.values() if (v := value(r, "test_acc", early))
                                                  is not None]) for name, early in (("final", False), ("early", True))})
                           for i, by_seed in enumerate(runs)]
        records.append(record)
    return records


def choice(family, runs, index, why, *, early, ce, dataset):
    """The columns of one choice: what was chosen (its index) and why not, its test accuracy (mean,
    s.e., n), its validation score, the oracle bound and the paired difference against CE."""
    suffix = "_early" if early else ""
    out = {f"chosen{suffix}": None if index is None else flags(family, index, dataset), f"no_choice{suffix}": why,
           f"index{suffix}": index}
    tests = [{s: value(r, "test_acc", early) for s, r in by_seed.items()} for by_seed in runs]
    if index is not None:
        mean, se = mean_se(list(tests[index].values()))
        val = mean_se([value(r, "val_acc", early) for r in runs[index].values()])[0]
        clean_val = [value(r, "val_clean_acc", early) for r in runs[index].values()]
        out.update({f"test_acc{suffix}": mean, f"test_acc{suffix}_se": se, f"n{suffix}": len(tests[index]),
                    f"val_acc{suffix}": val,
                    f"val_clean_acc{suffix}": None if None in clean_val else mean_se(clean_val)[0]})
        base = {s: value(r, "test_acc", early) for s, r in ce.items()}
        seeds = sorted(set(base) & set(tests[index]))
        if family.key != "ce" and seeds and None not in base.values():
            diff, low, high = paired_interval([tests[index][s] - base[s] for s in seeds])
            out.update({f"minus_ce{suffix}": diff, f"minus_ce{suffix}_low": low, f"minus_ce{suffix}_high": high})
    complete = [i for i, t in enumerate(tests) if t and None not in t.values()]
    if len(complete) == len(tests):  # the oracle: best on test accuracy, an upper bound, never a choice
        means = [mean_se(list(t.values()))[0] for t in tests]
        best = next(i for i, m in enumerate(means) if m >= max(means) - TIE)
        out.update({f"oracle{suffix}": flags(family, best, dataset), f"oracle_test_acc{suffix}": means[best]})
        if index is not None:
            out[f"oracle_gap{suffix}"] = means[best] - means[index]
    return out


COLUMNS = ["dataset", "loss", "rho", "chosen", "test_acc", "test_acc_se", "chosen_early", "test_acc_early",
           "test_acc_early_se", "n", "n_early", "val_acc", "val_acc_early", "val_clean_acc", "val_clean_acc_early",
           "minus_ce", "minus_ce_low", "minus_ce_high", "minus_ce_early", "minus_ce_early_low", "minus_ce_early_high",
           "oracle", "oracle_test_acc", "oracle_gap", "oracle_early", "oracle_test_acc_early", "oracle_gap_early",
           "no_choice", "no_choice_early", "candidates", "setting"]


def write_tuned(stem, title, records, note):
    """tables/<stem>_tuned.{md,csv}: a summary (loss x rho), then a row per (loss, rho) (docs/tuning.md)."""
    rhos = sorted({r["rho"] for r in records})
    losses = list(dict.fromkeys(r["loss"] for r in records))
    at = {(r["loss"], r["rho"]): r for r in records}

    def acc(r, suffix=""):
        if r is None or r.get(f"chosen{suffix}") is None:
            return "no choice" if r is not None else "-"
        return fmt_cell(r[f"test_acc{suffix}"], r[f"test_acc{suffix}_se"])

    def diff(r, suffix=""):  # two cells: the difference, and its interval
        if r.get(f"minus_ce{suffix}") is None:
            return ["", ""]
        low, high = r[f"minus_ce{suffix}_low"], r[f"minus_ce{suffix}_high"]
        return [f"{r[f'minus_ce{suffix}']:+.1f}", "" if low is None else f"[{low:+.1f}, {high:+.1f}]"]

    def chosen(r, suffix=""):
        return r.get(f"chosen{suffix}") or f"no choice: {r.get(f'no_choice{suffix}')}"

    def oracle(r, suffix=""):
        best = r.get(f"oracle{suffix}")
        return "-" if best is None else f"{r[f'oracle_test_acc{suffix}']:.1f} ({best})"
    summary = markdown(["Loss"] + [f"ρ = {rho:g}" for rho in rhos],
                       [[loss] + [f"{acc(at.get((loss, rho)))} / {acc(at.get((loss, rho)), '_early')}" for rho in rhos]
                        for loss in losses])
    detail = [[r["loss"], f"{r['rho']:g}", chosen(r), acc(r), *diff(r), chosen(r, "_early"), acc(r, "_early"),
               *diff(r, "_early"), str(r.get("n") or "-"), oracle(r), oracle(r, "_early")]
              for r in sorted(records, key=lambda r: (r["rho"], losses.index(r["loss"])))]
    write_table(stem + "_tuned", title,
                ["Loss", "ρ", "chosen (final)", "final test acc.", "− CE", "95% CI", "chosen (stopped early)",
                 "stopped-early test acc.", "− CE", "95% CI", "n", "oracle bound (final)",
                 "oracle bound (stopped early)"], detail,
                [{k: r.get(k) for k in COLUMNS} | {"setting": " ".join(f"{k}={v}" for k, v in r["setting"])}
                 for r in records], columns=COLUMNS,
                before=[*note, "Test accuracy (%) of each loss at the candidate chosen on noisy validation data, "
                        "mean ± standard error over trials: final epoch / stopped early (at each run's epoch of "
                        "best noisy-validation accuracy, the candidate chosen by the same rule).", "", *summary, "",
                        "Per loss and ρ: the choices (the flags that produce them), paired differences against CE "
                        "on the same seeds (95% t-interval), and the oracle: the candidate best on test accuracy, "
                        "an upper bound that no practitioner can reach, never a choice.", ""],
                after=["Chosen: the candidate of best mean noisy-validation accuracy over the trials; ties go to "
                       "the candidate listed first in grid.TUNE; a missing candidate or trial means no choice. "
                       "The test set takes no part in any choice (docs/tuning.md)."])


def tuned_tables(root, out, stem):
    """write_tuned for each dataset and setting of the runs under root (a tune/ folder), as
    tables/<stem><dataset>[_setting<i>]. Returns [(name, title, its records)]."""
    rows = load_runs(root)
    records = outcomes(runs_of(rows, root))
    written = []
    for dataset in sorted({r["dataset"] for r in records}):
        mine = [r for r in records if r["dataset"] == dataset]
        settings = sorted({r["setting"] for r in mine})
        for i, setting in enumerate(settings):
            part = [r for r in mine if r["setting"] == setting]
            name = f"{stem}{dataset}" + (f"_setting{i + 1}" if len(settings) > 1 else "")
            title = f"{dataset}: each loss at its noisy-validation choice per ρ ({describe(dataset, setting)})"
            write_tuned(os.path.join(out, "tables", name), title, part, smoke_banner(rows))
            written.append((name, title, part))
    return written


def describe(dataset, setting):
    """The settings of a table's runs that are not the report's for the dataset, e.g. 'epochs 20,
    limit_train 5000, lr_decay 1, weight_decay 0, val_split 0.1'."""
    report = {**catalog.DATASETS[dataset]["settings"], "noise": "symmetric", "noise_seed": 0,
              "channels_last": False, "init": "report"}
    report = {k: " ".join(map(str, v)) if isinstance(v, list) else v for k, v in report.items()}  # as CSV cells
    shown = [f"{k} {v}" for k, v in setting if k != "model" and not (k in report and same(v, report[k]))]
    return ", ".join(shown) or "the report's settings"


# ---------------------------------------------------------------------------------------------
# The original paper's protocol for tau (run_all.sh --tune-tau; grid.choose_tau), outside the fair comparison.

def tau_choices(rows):
    """{(dataset, loss, logit_clip): tau} for every partially Huberised loss (alone, or behind
    LogitClip at one norm) with noisy-validation runs."""
    keys = {(r["dataset"], r["loss"], parse_number(r.get("logit_clip"))) for r in rows if r["loss"] in grid.BASE}
    taus = {(dataset, loss, clip): grid.choose_tau(rows, dataset, loss, logit_clip=clip)[0]
            for dataset, loss, clip in sorted(keys, key=lambda k: (k[0], k[1], k[2] or 0))}  # None (no LogitClip) first
    return {key: tau for key, tau in taus.items() if tau is not None}


def tau_selection_table(validation_rows, rows, out):
    """Which tau the protocol chose, on what evidence, and the test accuracy the grid then got."""
    lines = []
    for (dataset, loss, clip), tau in tau_choices(validation_rows).items():
        _, scores = grid.choose_tau(validation_rows, dataset, loss, logit_clip=clip)
        listed = ", ".join(f"τ={t:g}: {s:.1f}%" for t, s in sorted(scores.items()))
        test = defaultdict(list)
        for r in rows:
            if (r["dataset"], r["loss"], parse_number(r.get("tau")), r.get("clip_norm"),
                    parse_number(r.get("logit_clip"))) == (dataset, loss, tau, "", clip):
                test[float(r["rho"])].append(float(r["test_acc"]))
        found = ", ".join(f"ρ={rho:g}: {mean_se(v)[0]:.1f}% (n={len(v)})" for rho, v in sorted(test.items()))
        lines.append([dataset, grid.NAMES[loss] + (f" + LogitClip δ = {clip:g}" if clip else ""), f"{tau:g}", listed,
                      found or "-"])
    if lines:
        write_table(os.path.join(out, "tables", "tau_selection"),
                    "τ chosen by final noisy-validation accuracy at the highest noise rate (test data unused)",
                    ["dataset", "loss", "chosen τ", "noisy-validation accuracy per τ",
                     "test accuracy with the chosen τ"], lines)
