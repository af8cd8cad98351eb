"""The report's tables and figures (Tables 1-3, Figures 2-3) from the result files of the training and
synthetic scripts; docs/grid.md lists every file written (docs/memorisation.md and docs/tuning.md,
those of the memorisation benchmark and the fair comparison).

    python aggregate.py                        # reads results/, writes results/tables and results/figures
    python aggregate.py --results results/quick
    python aggregate.py --results results/tuning --choose-tau --dataset mnist --loss phuber_ce

Per dataset: tables/<dataset>.{md,tex,csv} (losses by rho, mean ± s.e. over trials, best cell per
column in bold), _comparison (against reference_results.csv), _paired (each partially Huberised
loss minus its base loss), _human (CIFAR-N keys as columns); figures/<dataset>_accuracy, _curves,
_memorisation, _tau_sweep. Missing cells show as a dash; malformed or truncated files are reported
by name and skipped. --choose-tau prints the tau of best final noisy-validation accuracy at the
highest noise rate (the original paper's protocol; test accuracy is never read).
"""
import argparse
import glob
import os
import sys
from collections import defaultdict

import catalog
import figures
import grid
import results
import selection
from errors import Parser
from tables import (LOSS_KEYS, describe_settings, fmt_cell, load_epochs, load_reference, load_runs, loss_key,
                    loss_label, loss_sort, mean_se, neutralise, paired_interval, parse_number, peak, read_rows,
                    reference_key, setting_of, shared_deviations, smoke_banner, summary_table, table_entries,
                    unreadable, warn, write_table)

HERE = os.path.dirname(os.path.abspath(__file__))
FIGURE_LIMIT = 64 << 20  # the synthetic experiments' figures are 20-70 kB


def dataset_table(dataset, rows, out, expected, chosen, *, other_noise_seeds=0, layout=None, stem=None, note=(),
                  by="rho"):
    """The final test accuracy table of one dataset as tables/<stem or dataset>.{md,tex,csv}, rows in the
    order and with the labels of `layout` (the report's by default), a dagger on the taus `chosen`
    (selection.tau_choices), `note` under the title. Returns its entries and columns (rhos, or by="noise_key")."""
    table, levels = table_entries(rows, grid.report_rows(dataset) if layout is None else layout, by=by)
    for e in table:
        row = dict(zip(LOSS_KEYS, e["key"]))
        if row["tau"] and not row["clip_norm"] and chosen.get((dataset, row["loss"], parse_number(row["logit_clip"]))) \
                == float(row["tau"]):
            e["label"] += " †"
    best = {level: max((e["cells"][level][0] for e in table if e["cells"][level][0] is not None), default=None)
            for level in levels}
    is_best = lambda e, level: e["cells"][level][0] is not None and e["cells"][level][0] == best[level]  # noqa: E731
    after = ["† τ chosen by final noisy-validation accuracy at the highest noise rate (tables/tau_selection.md)."] \
        if any("†" in e["label"] for e in table) else []
    if other_noise_seeds:
        after.append(f"{other_noise_seeds} runs with other label-noise seeds are in tables/noise_seeds.md.")
    records = [dict(dataset=dataset, label=e["label"], **dict(zip(LOSS_KEYS, e["key"])), **{by: level},
                    **dict(zip(("mean", "se", "n"), e["cells"][level])), best=is_best(e, level))
               for e in table for level in levels]
    differ = shared_deviations([(dataset, e["setting"]) for e in table])  # instance noise, say: in the title
    write_table(os.path.join(out, "tables", stem or dataset),
                f"{dataset}{', ' + differ if differ else ''}: test accuracy (%), mean ± standard error over trials "
                f"(n shown when below {expected})",
                ["Loss"] + [f"ρ = {level:g}" if by == "rho" else level for level in levels],
                [[e["label"]] + [fmt_cell(*e["cells"][level], expected) for level in levels] for e in table],
                records, columns=["dataset", "label", *LOSS_KEYS, by, "mean", "se", "n", "best"],
                bold={(i, j + 1) for i, e in enumerate(table) for j, level in enumerate(levels) if is_best(e, level)},
                before=smoke_banner(rows) + list(note), after=after, latex=True)
    return table, levels


def comparison(dataset, table, rhos, refs, out):
    """Ours against the published numbers, each column named by where it was published."""
    rows = []
    for e in table:
        for rho in rhos:
            ref = refs.get(reference_key(dataset, e["key"], rho, e["setting"]), {})
            mean, se, n = e["cells"][rho]
            if mean is None and not ref:
                continue
            row = dict(loss=e["label"], rho=rho, ours=None if mean is None else round(mean, 2),
                       ours_se=None if se is None else round(se, 2), n=n)
            for source in ("reproduction", "original"):
                value, pm, where = ref.get(source, (None, None, None))
                row.update({source: value, f"{source}_se": pm, f"{source}_where": where,
                            f"ours_minus_{source}": None if mean is None or value is None else round(mean - value, 2)})
            rows.append(row)
    if not any(r["reproduction"] is not None or r["original"] is not None for r in rows):
        return
    # The report published no CIFAR-10 numbers: its authors' code README did, later. A column says
    # "report" only when every number in it is the report's.
    wheres = {source: sorted({r[f"{source}_where"] for r in rows if r[f"{source}_where"]})
              for source in ("reproduction", "original")}
    reproduction = wheres["reproduction"][0] if len(wheres["reproduction"]) == 1 else "reproduction"
    sources = f"reproduction: {'; '.join(wheres['reproduction'])}; original paper: {'; '.join(wheres['original'])}"
    signed = lambda v: "-" if v is None else f"{v:+.1f}"  # noqa: E731
    cells = [[r["loss"], f"{r['rho']:g}", fmt_cell(r["ours"], r["ours_se"], r["n"]),
              fmt_cell(r["reproduction"], r["reproduction_se"]), fmt_cell(r["original"], r["original_se"]),
              signed(r["ours_minus_reproduction"]), signed(r["ours_minus_original"])] for r in rows]
    write_table(os.path.join(out, "tables", f"{dataset}_comparison"),
                f"{dataset}: ours against the published test accuracies (%), mean ± standard error where given",
                ["Loss", "ρ", "ours", reproduction, "original paper", "ours − reproduction", "ours − original"],
                cells, rows, after=[f"Sources (reference_results.csv): {sources}."])


def noise_seed_table(rows, refs, out, expected):
    """The report's Table 3: per noise rate, dataset and loss, the test accuracy for each label noise
    seed (mean ± s.e. over trials), then the original paper's, where runs used several noise seeds."""
    by = defaultdict(lambda: defaultdict(list))
    for r in rows:
        key = (float(r["rho"]), r["dataset"], setting_of(r, ignore=("noise_seed",)), loss_key(r))
        by[key][int(r.get("noise_seed") or 0)].append(float(r["test_acc"]))
    studied = {k: v for k, v in by.items() if len(v) > 1}
    if not studied:
        return
    seeds = sorted({s for per_seed in studied.values() for s in per_seed})
    datasets = list(catalog.DATASETS)
    order = sorted(studied, key=lambda k: (k[0], datasets.index(k[1]) if k[1] in datasets else len(datasets), k[1],
                                           loss_sort(k[3], grid.report_rows(k[1])), k[2]))
    # settings that differ between rows, named per dataset (the datasets' own always differ)
    labels = {(dataset, s): text for dataset in {k[1] for k in order}
              for s, text in describe_settings({k[2] for k in order if k[1] == dataset}).items()}
    table, records = [], []
    for rho, dataset, setting, key in order:  # the seeds are the columns: any is the published runs'
        original = refs.get(reference_key(dataset, key, rho, setting, ignore=("noise_seed",)), {}).get(
            "original", (None, None, None))
        label = loss_label(key, grid.report_rows(dataset)) + labels[dataset, setting]
        cells = []
        for seed in seeds:
            values = studied[(rho, dataset, setting, key)].get(seed, [])
            mean, se = mean_se(values)
            cells.append(fmt_cell(mean, se, len(values), expected))
            records.append(dict(rho=rho, dataset=dataset, loss=label, noise_seed=seed, mean=mean, se=se,
                                n=len(values)))
        records.append(dict(rho=rho, dataset=dataset, loss=label, noise_seed="original paper", mean=original[0],
                            se=original[1], n=None))
        table.append([f"ρ = {rho:g}", dataset, label, *cells, fmt_cell(*original[:2])])
    differ = shared_deviations([(dataset, setting) for _, dataset, setting, _ in order], ignore=("noise_seed",))
    write_table(os.path.join(out, "tables", "noise_seeds"),
                f"Impact of the label noise seed (the report's Table 3){', ' + differ if differ else ''}: test "
                f"accuracy (%), mean ± standard error over trials (n shown when below {expected})",
                ["Label noise", "Dataset", "Loss", *[f"Seed {s}" for s in seeds], "Original paper"], table,
                records, before=smoke_banner(rows), latex=True)


def base_loss(key):
    """The loss key a partially Huberised loss is paired with (its base loss, same parameters), or None."""
    row = dict(zip(LOSS_KEYS, key))
    if row["loss"] not in grid.BASE or row["clip_norm"]:
        return None
    base = grid.BASE[row["loss"]]
    return tuple(base if k == "loss" else row[k] if k in {**catalog.LOSSES[base], **catalog.WRAPPERS} else "" for k in LOSS_KEYS)


def paired_differences(dataset, rows, out, layout, *, against=None, stem=None):
    """Each loss minus the loss it is paired with on the same seeds, per rho: 95% t-interval. The pair
    is `against` (a loss key) for every other loss; without it, each partially Huberised loss's base."""
    by = defaultdict(dict)
    for row in rows:
        by[(setting_of(row), loss_key(row), float(row["rho"]))][int(row["seed"])] = float(row["test_acc"])
    result = []
    for (setting, key, rho), ours in sorted(by.items(), key=lambda kv: (loss_sort(kv[0][1], layout), kv[0][2])):
        base_key = against or base_loss(key)
        theirs = by.get((setting, base_key, rho), {})
        seeds = sorted(set(ours) & set(theirs))
        if base_key == key or not seeds:
            continue
        mean, low, high = paired_interval([ours[s] - theirs[s] for s in seeds])
        result.append(dict(loss=loss_label(key, layout), base=loss_label(base_key, layout), rho=rho, n=len(seeds),
                           mean_diff=round(mean, 3), ci_low=low, ci_high=high))
    if not result:
        return
    cells = [[r["loss"], r["base"], f"{r['rho']:g}", str(r["n"]), f"{r['mean_diff']:+.2f}",
              "-" if r["ci_low"] is None else f"[{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]"] for r in result]
    pairs = f"each loss minus {loss_label(against, layout)}" if against else \
        "partially Huberised loss minus its base loss"
    write_table(os.path.join(out, "tables", f"{stem or dataset}_paired"),
                f"{dataset}: {pairs}, same seeds (test accuracy points)",
                ["Loss", "base", "ρ", "n", "mean difference", "95% CI"], cells, result)


def synthetic(root, out):
    """Copy the synthetic experiments' summaries (neutralised, like every table) and figures next to
    the others."""
    folder = os.path.join(root, "synthetic")
    copied = []
    for pattern in ("*_summary.csv", "*minimisers.csv"):
        for path in sorted(glob.glob(os.path.join(folder, pattern))):
            rows = read_rows(path, [])
            if rows:
                results.write_csv(os.path.join(out, "tables", "synthetic_" + os.path.basename(path)),
                                  [{k: neutralise(v) for k, v in r.items()} for r in rows])
                copied.append(os.path.basename(path))
    for path in sorted(glob.glob(os.path.join(folder, "*.png")) + glob.glob(os.path.join(folder, "*.pdf"))):
        try:  # a link to /dev/zero would be copied until the disk is full
            content = results.read_file(path, FIGURE_LIMIT)
        except (OSError, results.BadFile) as e:
            unreadable(path, e)
            continue
        results.write_atomic(os.path.join(out, "figures", "synthetic_" + os.path.basename(path)),
                             lambda f: f.write(content), binary=True)
        copied.append(os.path.basename(path))
    return copied


# ---------------------------------------------------------------------------------------------
# The memorisation benchmark (run_all.sh --memorisation, docs/memorisation.md): its own results folder.

def memorisation(root, out, plt):
    """The benchmark's tables and figure for each dataset of the runs under root (tables/
    memorisation_<dataset>*, figures/memorisation_<dataset>). Returns what was aggregated."""
    rows, layout, expected = load_runs(root), grid.memorisation_rows(), grid.MEMORISATION["trials"]
    note = [f"Memorisation benchmark (docs/memorisation.md): the report's MNIST settings with "
            f"{' '.join(grid.MEMORISATION['flags'])}; accuracy at the final epoch.", ""]
    written = []
    for dataset in sorted({r["dataset"] for r in rows}):
        ds_rows, stem = [r for r in rows if r["dataset"] == dataset], f"memorisation_{dataset}"
        dataset_table(dataset, ds_rows, out, expected, {}, layout=layout, stem=stem, note=note)
        paired_differences(dataset, ds_rows, out, layout, against=loss_key(dict(loss="ce")), stem=stem)
        epochs = {r["run"]: load_epochs(root, r["run"]) for r in ds_rows}
        peaks = [dict(r, **peak(epochs[r["run"]])) for r in ds_rows if epochs[r["run"]]]
        table, rhos = table_entries(peaks, layout, "peak_acc")
        for e, when in zip(table, table_entries(peaks, layout, "peak_epoch")[0]):  # the same cells, in one order
            e["epochs"] = when["values"]
        summary_table(os.path.join(out, "tables", f"{stem}_peak"),
                      f"{dataset}: peak test accuracy over the epochs (%), mean ± standard error over trials "
                      f"(n shown when below {expected}), and the epoch of each trial's peak (trials by seed)",
                      table, rhos, expected, after=["The peak is reported, never used to choose anything: it reads "
                                                    "the test set at every epoch. Every other table is of the final "
                                                    "epoch."])
        summary_table(os.path.join(out, "tables", f"{stem}_memorised"),
                      f"{dataset}: corrupted training samples memorised (predicted as their noisy label) at the "
                      f"final epoch (%), mean ± standard error over trials (n shown when below {expected})",
                      *table_entries(ds_rows, layout, "memorised"), expected, after=["At ρ = 0 nothing is corrupted."])
        if plt:
            figures.memorisation_figure(dataset, ds_rows, epochs, out, plt)
        written.append(f"memorisation {dataset} ({len(ds_rows)} runs)")
    return written


def tuned(root, out, plt, stem=""):
    """The fair comparison (run_all.sh --tune; its runs in root/tune, never in the tables above):
    tables/<stem><dataset>_tuned.{md,csv} and figures/<stem><dataset>_tuned.{png,pdf}."""
    written = selection.tuned_tables(os.path.join(root, "tune"), out, stem)
    for name, title, records in written if plt else ():
        figures.tuned_figure(os.path.join(out, "figures", f"{name}_tuned"), title, records, plt)
    return [f"{name}_tuned ({len(records)} loss x rho)" for name, _, records in written]


# ---------------------------------------------------------------------------------------------

def main(argv=None):
    p = Parser(prog="aggregate.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default="results", help="results folder to read (default: %(default)s)")
    p.add_argument("--out", help="where tables/ and figures/ go (default: the --results folder)")
    p.add_argument("--trials", type=int, default=grid.TRIALS,
                   help="expected trials per cell; fewer are flagged (default: %(default)s)")
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
    if args.trials < 1:
        p.error(f"--trials {args.trials} is not allowed: at least 1")
    try:
        candidates = [float(t) for t in args.candidates.split(",")] if args.candidates else None
    except ValueError:
        p.error(f"--candidates {args.candidates!r} is not allowed: comma-separated numbers, e.g. 2,10")
    out = args.out or args.results
    if not args.choose_tau:
        try:
            results.check_writable(out)
        except ValueError as e:
            p.error(f"--out {e}")
    try:
        return aggregate(args, out, candidates)
    except OSError as e:  # a full disk, a folder that became read-only: one line, not a traceback
        warn(f"cannot write the tables to {out}: {e.strerror or e}" + (f" ({e.filename})" if e.filename else ""))
        return 1


def aggregate(args, out, candidates):
    rows = load_runs(args.results)
    if args.choose_tau:
        tau, scores = grid.choose_tau(rows, args.dataset, args.loss, candidates)
        if tau is None:
            warn(f"no tau chosen for {args.dataset} {args.loss}: validation runs in {args.results} cover "
                 f"tau {sorted(scores) or 'none'}, expected {candidates or 'some'}")
            return 1
        print(f"{tau:g}")
        return 0

    human = [r for r in rows if r.get("noise") == "human"]  # run_all.sh --human-noise: a column per CIFAR-N key
    rows = [r for r in rows if r.get("noise") != "human"]
    plt = None if args.no_plot else results.pyplot()
    refs = load_reference(args.reference) if os.path.exists(args.reference) else {}
    # tau tuning runs (run_all.sh --tune-tau) live in their own results folder
    tuning = os.path.join(args.results, "tuning")
    validation_rows = load_runs(tuning) if os.path.isdir(tuning) else rows
    chosen = selection.tau_choices(validation_rows)
    written = []
    for dataset in sorted({r["dataset"] for r in human}):
        ds_rows = [r for r in human if r["dataset"] == dataset]
        dataset_table(dataset, ds_rows, out, args.trials, {}, stem=f"{dataset}_human", by="noise_key",
                      note=["Human label noise (CIFAR-N, Wei et al. 2022): a column per label set of the file; "
                            "realised noise rates are the runs' flip_rate (docs/noise.md).", ""])
        written.append(f"{dataset} human noise ({len(ds_rows)} runs)")
    for dataset in sorted({r["dataset"] for r in rows}):
        ds_rows = [r for r in rows if r["dataset"] == dataset]
        # the report's tables use label noise seed 0; the other seeds are the noise-seed study's
        main = [r for r in ds_rows if int(r.get("noise_seed") or 0) == 0] or ds_rows
        table, rhos = dataset_table(dataset, main, out, args.trials, chosen, other_noise_seeds=len(ds_rows) - len(main))
        comparison(dataset, table, rhos, refs, out)
        paired_differences(dataset, main, out, grid.report_rows(dataset))
        if plt:
            figures.accuracy_figure(dataset, table, rhos, refs, out, plt=plt)
            figures.curve_figures(dataset, main, args.results, out, plt)
            figures.tau_sweep_figure(dataset, main, out, plt)
        written.append(f"{dataset} ({len(ds_rows)} runs)")
    noise_seed_table(rows, refs, out, args.trials)
    selection.tau_selection_table(validation_rows, rows, out)
    benchmark = os.path.join(args.results, grid.MEMORISATION["folder"])  # its runs: not in the tables above
    written += memorisation(benchmark, out, plt) + tuned(args.results, out, plt)
    written += tuned(benchmark, out, plt, "memorisation_")
    copied = synthetic(args.results, out)
    if not written and not copied:
        warn(f"no results found under {args.results}")
        return 1
    print(f"aggregate.py: tables in {os.path.join(out, 'tables')}, figures in {os.path.join(out, 'figures')}: "
          + ", ".join(written + ([f"synthetic ({len(copied)} files)"] if copied else [])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
