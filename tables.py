"""Result rows into tables, for aggregate.py (no torch): result files read as untrusted input (bad
files and rows are named on stderr and skipped); runs grouped into cells (row: the loss setting,
column: rho, trials: the seeds), ordered and labelled as a grid layout has them; the published numbers
(reference_results.csv) beside runs of the published settings only; one writer of Markdown, LaTeX, CSV.
"""
import math
import os
import re
import sys
from collections import defaultdict

import numpy as np
from scipy import stats

import catalog
import grid
import results

LOSS_KEYS = results.LOSS_SETTINGS  # a table row: the loss, its parameters and its clipping
GRID_KEYS = ("dataset", "rho", "seed")
REQUIRED = ["run", "dataset", "loss", "seed", "test_acc"]  # and rho, but for human noise (its key instead)


def warn(message):
    print(f"aggregate.py: {message}", file=sys.stderr)


def parse_number(value):
    """A CSV field as a float; None for an empty or missing one."""
    return float(value) if value not in (None, "") else None


def read_rows(path, required, check=None):
    """Rows of a CSV from outside (results.read_csv), or None if the file is unusable: bad rows, and
    rows with an empty required field or that check(row) rejects, are named on stderr and dropped."""
    bad = lambda line, why: warn(f"skipping {path} line {line}: {why}")  # noqa: E731
    try:
        return results.read_csv(path, required, check, bad=bad)
    except (OSError, results.BadFile) as e:
        return unreadable(path, e)


def unreadable(path, e):
    """Say that the file `path` from outside is skipped, and why (OSError, or BadFile, which names it)."""
    warn(f"skipping {e}" if isinstance(e, results.BadFile) else f"skipping {path}: {e.strerror or e}")


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")  # a dataset name: it names output files, so no path


def real(row, column, low=-math.inf, high=math.inf, optional=False):
    """The finite number in row[column], within [low, high]; ValueError naming it otherwise."""
    text = row.get(column)
    if optional and text in ("", None):
        return None
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"{column} {text!r} is not a number") from None
    if not (math.isfinite(value) and low <= value <= high):
        raise ValueError(f"{column} {text!r} is not a finite number in [{low:g}, {high:g}]")
    return value


def integer(row, column, optional=False):
    """ValueError unless row[column] is ASCII digits: int() would also read '٣' as 3."""
    text = row.get(column)
    if not (optional and text in ("", None) or results.whole_number(text) is not None):
        raise ValueError(f"{column} {text!r} is not an integer >= 0")


def check_run(row):
    """A summary row's values: accuracies, rho, seeds, loss parameters, dataset name."""
    real(row, "test_acc", 0, 100)
    real(row, "val_acc", 0, 100, optional=True)
    real(row, "memorised", 0, 100, optional=True)
    if row.get("noise") == "human":
        if not NAME.fullmatch(row.get("noise_key") or ""):
            raise ValueError(f"noise_key {row.get('noise_key')!r} is not a CIFAR-N key (letters, digits, _ . + -)")
    else:
        real(row, "rho", 0, 1)
    integer(row, "seed")
    integer(row, "noise_seed", optional=True)
    real(row, "clip_norm", 0, optional=True)
    for name in catalog.PARAMS:
        if row.get(name) not in ("", None):
            catalog.check_param(name, real(row, name))
    if not NAME.fullmatch(row["dataset"]):
        raise ValueError(f"dataset {row['dataset']!r} is not a dataset name (letters, digits, _ . + -)")


def check_epoch(row):
    integer(row, "epoch")
    real(row, "test_acc", 0, 100)
    real(row, "memorised", 0, 100, optional=True)


# Folders below a results root that are not its runs: other results roots (each aggregated on its
# own) and what the runs and aggregate.py write.
OTHER_ROOTS = ("quick", "tuning", "tune", grid.MEMORISATION["folder"], "runs", "tables", "figures", "logs")


def load_runs(root):
    """One row per run of the summary*.csv files under root, outside OTHER_ROOTS (the newest where several
    files hold the same run), as read."""
    runs = {}
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [s for s in subfolders if s not in OTHER_ROOTS]
        for name in sorted(f for f in files if f.startswith("summary") and f.endswith(".csv")):
            for row in read_rows(os.path.join(folder, name), REQUIRED, check_run) or []:
                if row["run"] not in runs or row.get("finished", "") >= runs[row["run"]].get("finished", ""):
                    runs[row["run"]] = row
    return list(runs.values())


def load_epochs(root, run):
    """A run's epochs.csv rows, or None when it is missing, malformed or empty (named on stderr)."""
    path = os.path.join(root, "runs", run, "epochs.csv")
    if not os.path.exists(path):
        warn(f"skipping the epochs of run {run}: no {path}")
        return None
    rows = read_rows(path, ["epoch", "test_acc"], check_epoch)
    if rows == []:
        warn(f"skipping {path}: no epochs")
    return rows or None


def canonical(text):
    """A CSV cell as a value to compare: a number by its value, in its shortest exact form ('10.0', '10'
    and '1e1' are '10'), TRUE as True: what a spreadsheet rewrites when it saves a file."""
    try:
        return grid.number_text(float(text))
    except ValueError:
        return text.capitalize() if text.lower() in ("true", "false") else text


def setting_of(row, ignore=()):
    """The settings (results.SCHEMA) beyond the table's row and column (and `ignore`) that a run was
    made with: runs are pooled as trials of one cell only when these agree."""
    return tuple(sorted((k, canonical(v)) for k, v in row.items() if results.SCHEMA.get(k) == "setting"
                        and k not in LOSS_KEYS and k not in GRID_KEYS and k not in ignore and v not in ("", None)))


def loss_key(row):
    key = {k: canonical(row.get(k, "") or "") for k in LOSS_KEYS}
    if not key["clip_norm"]:
        key["clip_mode"] = ""  # the mode means nothing without clipping
    return tuple(key[k] for k in LOSS_KEYS)


def has_flags(key, flags):
    """Whether loss key `key` is the setting that `flags` (a grid.Row's) train."""
    row, flags = dict(zip(LOSS_KEYS, key)), {**flags, "clip_mode": "global" if "clip_norm" in flags else ""}
    return all(same(row[k], flags.get(k, "")) for k in LOSS_KEYS)


def layout_row(layout, key):
    """(position, label) of the row of `layout` (a table's grid.Row list) that loss key `key` is, or None."""
    return next(((i, r.label) for i, r in enumerate(layout) if has_flags(key, r.flags)), None)


def same(text, value):
    """A CSV cell equals a setting: '10.0' is 10, '' is unset."""
    if isinstance(value, float):
        try:
            return float(text) == value
        except ValueError:
            return False
    return text == str(value)


def loss_label(key, layout):
    """The label of its row in `layout` (grid.report_rows(dataset): 'PHuber-CE τ = 10', 'CE + clipping'),
    else e.g. 'PHuber-CE τ = 3 + clipping (0.5)': parameters at the loss's default are not named, but tau."""
    report = layout_row(layout, key)
    if report:
        return report[1]
    row = dict(zip(LOSS_KEYS, key))
    defaults, params = catalog.LOSSES, catalog.PARAMS
    label, default = grid.NAMES.get(row["loss"], row["loss"]), defaults.get(row["loss"], {})
    wrappers = [name for name in params if "wrapper" in params[name]]  # LogitClip: named after the loss
    for name in params:
        if name not in wrappers and row[name] and (name == "tau" or float(row[name]) != default.get(name)):
            label += f" {params[name]['symbol']} = {float(row[name]):g}"
    if row["clip_norm"]:
        mode = "per-example " if row["clip_mode"] == "per-example" else ""
        label += f" + {mode}clipping ({float(row['clip_norm']):g})"
    for name in wrappers:
        if row[name]:
            label += f" + {params[name]['wrapper']} {params[name]['symbol']} = {float(row[name]):g}"
    return label


def loss_sort(key, layout):
    """The rows of `layout` first, in its order; then the others by loss (registry order) and settings."""
    report = layout_row(layout, key)
    if report:
        return (0, report[0])
    row = dict(zip(LOSS_KEYS, key))
    order = list(catalog.LOSSES)
    return (1, order.index(row["loss"]) if row["loss"] in order else len(order), row["loss"], bool(row["clip_norm"]),
            row["clip_mode"], float(row["clip_norm"] or 0), *(float(row[k] or 0) for k in catalog.PARAMS))


def mean_se(values):
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return None, None
    se = values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else None
    return float(values.mean()), se


def describe_settings(settings):
    """Name the settings that differ between groups of runs of one dataset (for row labels)."""
    keys = sorted({k for s in settings for k, _ in s})
    differing = [k for k in keys if len({dict(s).get(k) for s in settings}) > 1]
    return {s: " [" + ", ".join(f"{k}={dict(s).get(k, '-')}" for k in differing) + "]" if differing else ""
            for s in settings}


def table_entries(rows, layout, column="test_acc", by="rho"):
    """The rows of one dataset's loss x rho table of `column` (by="noise_key": columns by human-noise key),
    in `layout` order, and its columns: each entry has label, key, setting, values {rho: {seed: value}}
    and cells {rho: (mean, se, n)}. Runs without a value (memorised at rho = 0) are left out."""
    cells = defaultdict(lambda: defaultdict(dict))
    for row in rows:
        if row.get(column) not in ("", None):
            level = float(row["rho"]) if by == "rho" else row[by]
            cells[(setting_of(row, ignore=(by,)), loss_key(row))][level][int(row["seed"])] = float(row[column])
    rhos = sorted({rho for per_rho in cells.values() for rho in per_rho})
    labels = describe_settings({setting for setting, _ in cells})
    entries = []
    for setting, key in sorted(cells, key=lambda sk: (loss_sort(sk[1], layout), sk[0])):
        values = {rho: cells[(setting, key)].get(rho, {}) for rho in rhos}
        entries.append(dict(label=loss_label(key, layout) + labels[setting], key=key, setting=setting, values=values,
                            cells={rho: (*mean_se(list(v.values())), len(v)) for rho, v in values.items()}))
    return entries, rhos


def peak(epochs):
    """The best test accuracy of a run's epochs.csv rows and its epoch (the first of equals)."""
    best = max(epochs, key=lambda r: float(r["test_acc"]))  # max returns the first of equals
    return dict(peak_acc=float(best["test_acc"]), peak_epoch=int(best["epoch"]))


def load_reference(path):
    """{key: {source: (mean, s.e. or None, where)}}: the published numbers, each with where it was
    published (reference_results.csv); key as reference_key makes it."""
    refs = defaultdict(dict)
    check = lambda row: (real(row, "rho", 0, 1), real(row, "mean", 0, 100), real(row, "pm", 0, optional=True))  # noqa
    for row in read_rows(path, ["source", "dataset", "loss", "rho", "mean", "where"], check) or []:
        key = (row["dataset"], row["loss"], parse_number(row["tau"]), parse_number(row["q"]),
               parse_number(row["clip_norm"]), float(row["rho"]))
        refs[key][row["source"]] = (float(row["mean"]), parse_number(row["pm"]), row["where"])
    return refs


# A run is set against a published number only when each of its settings is the published runs'
# (docs/grid.md). Two have more than one published value: --init (the report's words, and its authors'
# code, which made the numbers) and --amp (the report trained in fp16 and found it as accurate as
# float32, its section 5.2.2). channels_last only changes the memory layout.
PUBLISHED_ALSO, LAYOUT_ONLY = {"init": ("report", "authors-code"), "amp": ("fp16",)}, ("channels_last",)
NOISE = {"instance": "instance-dependent noise", "asymmetric": "asymmetric noise", "human": "human label noise"}


def deviations(dataset, setting, ignore=()):
    """{setting: value} of those of `setting` (setting_of) that are not the published runs' on
    `dataset`; {} for a dataset outside catalog.py (no published settings to differ from)."""
    if dataset not in catalog.DATASETS:
        return {}
    published = {k: canonical(results.format_value(v)) for k, v in catalog.DATASETS[dataset]["settings"].items()}
    published.update(noise="symmetric", noise_seed="0", val_split="0")
    have = dict(setting)
    return {k: have.get(k, "unset") for k in sorted(set(have) | set(published)) if k not in (*ignore, *LAYOUT_ONLY)
            and have.get(k, "") != published.get(k, "") and have.get(k) not in PUBLISHED_ALSO.get(k, ())}


def shared_deviations(settings, ignore=()):
    """'instance-dependent noise, epochs 5': the deviations that every (dataset, setting) of `settings`
    has, in words (a CIFAR-N file's key and hash are its noise's)."""
    shared = set.intersection(*(set(deviations(d, s, ignore).items()) for d, s in settings)) if settings else ()
    return ", ".join(NOISE.get(v, f"{v} noise") if k == "noise" else f"{k} {v}" for k, v in sorted(shared)
                     if k not in ("noise_key", "noise_file_sha256"))


def reference_key(dataset, key, rho, setting, ignore=()):
    """The key of the published number for a table cell (load_reference), or None when a setting of
    the loss (per-example clipping, LogitClip, a peer loss's parameter) or of the run (deviations, but
    for `ignore`) is not the published runs'."""
    row = dict(zip(LOSS_KEYS, key))
    unpublished = [k for k in catalog.PARAMS if k not in ("tau", "q") and row[k]]
    if row["clip_mode"] == "per-example" or unpublished or deviations(dataset, setting, ignore) \
            or dataset not in catalog.DATASETS:
        return None
    q = parse_number(row["q"]) if row["loss"] in ("gce", "phuber_gce") else None
    return dataset, row["loss"], parse_number(row["tau"]), q, parse_number(row["clip_norm"]), rho


def paired_interval(diffs):
    """Mean of paired differences and its 95% t-interval (None bounds with a single pair)."""
    diffs = np.asarray(diffs, dtype=float)
    mean = float(diffs.mean())
    if len(diffs) < 2:
        return mean, None, None
    half = stats.t.ppf(0.975, len(diffs) - 1) * diffs.std(ddof=1) / math.sqrt(len(diffs))
    return mean, round(mean - half, 3), round(mean + half, 3)


TEX = {"±": r"$\pm$", "†": r"$\dagger$", **{p["symbol"]: p["tex"] for p in catalog.PARAMS.values()
                                          if p["symbol"] != p["tex"].strip("$")}}


def tex(text):
    text = re.sub(r"ρ = (\S+)", r"$\\rho = \1$", text)
    for plain, latex in TEX.items():
        text = text.replace(plain, latex)
    return text


def neutralise(value):
    """A text cell that a spreadsheet would run as a formula (it begins with =, +, - or @; its text
    may come from a results file), quoted with a leading '. Numbers and the missing-cell '-' stay."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r") and value != "-":
        try:
            float(value)
        except ValueError:
            return "'" + value
    return value


def markdown(header, rows):
    return ["| " + " | ".join(header) + " |", "|---" * len(header) + "|", *("| " + " | ".join(r) + " |" for r in rows)]


def write_table(stem, title, header, rows, records=(), *, columns=None, bold=(), before=(), after=(), latex=False):
    """A table as stem.md (title, `before` lines, header and rows, `after` lines) and, with
    latex=True, as a stem.tex tabular of the same cells; `records` (dicts of raw values) as stem.csv.
    `bold` holds the (row, column) positions of cells to set in bold. Cells are neutralised."""
    rows = [[neutralise(c) for c in r] for r in rows]
    strong = lambda i, j, text, fmt: fmt.format(text) if (i, j) in bold else text  # noqa: E731
    md = [f"# {title}", "", *before,
          *markdown(header, [[strong(i, j, c, "**{}**") for j, c in enumerate(r)] for i, r in enumerate(rows)])]
    md += ["", *after] if after else []
    results.write_atomic(f"{stem}.md", lambda f: f.write("\n".join(md) + "\n"))
    if latex:
        lines = [r"\begin{tabular}{l" + "c" * (len(header) - 1) + "}", r"\toprule",
                 " & ".join(tex(h) for h in header) + r" \\", r"\midrule"]
        lines += [" & ".join(strong(i, j, tex(c), r"\textbf{{{}}}") for j, c in enumerate(r)) + r" \\"
                  for i, r in enumerate(rows)]
        lines += [r"\bottomrule", r"\end{tabular}"]
        results.write_atomic(f"{stem}.tex", lambda f: f.write("\n".join(lines) + "\n"))
    if records:
        results.write_csv(f"{stem}.csv", [{k: neutralise(v) for k, v in r.items()} for r in records], columns)


def summary_table(stem, title, table, rhos, expected, *, after):
    """table_entries (losses by rho, cells mean ± s.e.) as Markdown and CSV, unless empty; an entry's
    "epochs" ({rho: {seed: epoch}}), where it has them, follow its cells: each trial's, trials by seed."""
    def epochs(e, rho):
        return [str(int(e["epochs"][rho][seed])) for seed in sorted(e["epochs"][rho])] if "epochs" in e else []

    def cell(e, rho):
        return fmt_cell(*e["cells"][rho], expected) + (f" (ep {', '.join(epochs(e, rho))})" if epochs(e, rho) else "")
    if table:
        write_table(stem, title, ["Loss"] + [f"ρ = {rho:g}" for rho in rhos],
                    [[e["label"]] + [cell(e, rho) for rho in rhos] for e in table],
                    [dict(label=e["label"], **dict(zip(LOSS_KEYS, e["key"])), rho=rho,
                          **dict(zip(("mean", "se", "n"), e["cells"][rho])),
                          **({"epochs": " ".join(epochs(e, rho))} if "epochs" in e else {}))
                     for e in table for rho in rhos], after=after)


def smoke_banner(rows):
    """The lines that say a table of runs tested on a subset of the test set (--limit-test) is not a
    result (a training subset alone can be a design, docs/tuning.md: its tables name it)."""
    if any(r.get("limit_test") for r in rows):
        return ["**Smoke runs on a subset of the data (--limit-test, e.g. run_all.sh --quick): these numbers check "
                "the pipeline and are not results.**", ""]
    return []


def fmt_cell(mean, se, n=None, expected=0):
    """'98.0 ± 0.1', with '(n=2)' when fewer than `expected` trials; '-' for a missing cell."""
    if mean is None:
        return "-"
    text = f"{mean:.1f}" + (f" ± {se:.1f}" if se is not None else "")
    return text + (f" (n={n})" if n is not None and n < expected else "")
