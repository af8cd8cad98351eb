"""The figures of aggregate.py (matplotlib is passed in, imported only when figures are drawn)."""
import os
from collections import defaultdict

import numpy as np

import grid
import results
from tables import load_epochs, loss_key, loss_label, loss_sort, mean_se, parse_number, reference_key


def accuracy_figure(dataset, table, rhos, refs, out, *, plt):
    """Ours against rho, one line per loss; published numbers as markers named by their source."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    wheres = {"reproduction": set(), "original": set()}
    for i, e in enumerate(table):
        color = f"C{i % 10}"
        xs = [rho for rho in rhos if e["cells"][rho][0] is not None]
        ys = [e["cells"][rho][0] for rho in xs]
        errs = [e["cells"][rho][1] or 0 for rho in xs]
        ax.errorbar(xs, ys, yerr=errs, color=color, marker="o", ms=4, capsize=3, label=e["label"])
        for source, marker in (("reproduction", "s"), ("original", "x")):
            pts = [(rho, *refs[k][source]) for rho in rhos
                   if (k := reference_key(dataset, e["key"], rho, e["setting"])) in refs and source in refs[k]]
            if pts:
                wheres[source] |= {where for *_, where in pts}
                ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] or 0 for p in pts], color=color,
                            marker=marker, ms=5, ls="none", capsize=2, mfc="none" if marker == "s" else color)
    for source, marker, name in (("reproduction", "s", "reproduction"), ("original", "x", "original paper")):
        if wheres[source]:
            ax.scatter([], [], color="gray", marker=marker, facecolors="none" if marker == "s" else "gray",
                       label=f"{name}: {'; '.join(sorted(wheres[source]))}")
    ax.set(xlabel="label noise ρ", ylabel="test accuracy (%)", title=f"{dataset}: ours (lines) and published (markers)"
           if any(wheres.values()) else f"{dataset}: test accuracy, mean ± s.e. over trials")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    results.save_figure(fig, os.path.join(out, "figures", f"{dataset}_accuracy"))
    plt.close(fig)


MEMORISED = "corrupted samples memorised (%)"  # epochs.csv's memorised: fitted to their noisy label


def curve_figures(dataset, rows, root, out, plt):
    """Per-epoch test accuracy and memorisation, one panel per rho (figures/<dataset>_curves and
    <dataset>_memorisation)."""
    curves = epoch_curves(rows, {r["run"]: load_epochs(root, r["run"]) for r in rows})
    rhos = sorted({rho for _, rho in curves})
    stem = os.path.join(out, "figures", dataset)
    epoch_figure(f"{stem}_curves", f"{dataset}: test accuracy per epoch", curves, rhos, grid.report_rows(dataset),
                 metrics=[("test_acc", "test accuracy (%)")], plt=plt)
    epoch_figure(f"{stem}_memorisation", f"{dataset}: {MEMORISED} per epoch", curves, [rho for rho in rhos if rho > 0],
                 grid.report_rows(dataset), metrics=[("memorised", MEMORISED)], plt=plt)


def memorisation_figure(dataset, rows, epochs, out, plt):
    """The memorisation benchmark's figure: test accuracy (top) and memorisation (bottom) per epoch.
    epochs: {run: its epochs.csv rows, or None}."""
    curves = epoch_curves(rows, epochs)
    epoch_figure(os.path.join(out, "figures", f"memorisation_{dataset}"),
                 f"{dataset}, memorisation benchmark (constant learning rate, no weight decay)", curves,
                 sorted({rho for _, rho in curves}), grid.memorisation_rows(),
                 metrics=[("test_acc", "test accuracy (%)"), ("memorised", MEMORISED)], plt=plt)


def epoch_curves(rows, epochs):
    """{(loss key, rho): [epochs.csv rows of each run]} of the runs with epochs ({run: rows or None})."""
    curves = defaultdict(list)
    for row in rows:
        if epochs.get(row["run"]):
            curves[(loss_key(row), float(row["rho"]))].append(epochs[row["run"]])
    return curves


def epoch_figure(stem, title, curves, rhos, layout, *, metrics, plt):
    """A panel per metric (rows: [(epochs.csv column, axis label)]) and rho (columns): a line per
    loss, the mean over its trials, and a band from their minimum to their maximum, over the epochs
    every trial has. Loss order and labels are `layout`'s. Nothing is written when nothing is drawn."""
    keys = sorted({key for key, _ in curves}, key=lambda k: loss_sort(k, layout))
    if not rhos or not keys:
        return
    fig, axes = plt.subplots(len(metrics), len(rhos), figsize=(3.6 * len(rhos), 3 * len(metrics)), squeeze=False,
                             sharex=True, sharey="row")
    drawn = {}
    for (column, ylabel), panels in zip(metrics, axes):
        for ax, rho in zip(panels, rhos):
            for i, key in enumerate(keys):
                series = [{int(r["epoch"]): parse_number(r[column]) for r in run if r.get(column) not in ("", None)}
                          for run in curves.get((key, rho), [])]
                epochs = sorted(set.intersection(*(set(s) for s in series))) if series else []
                if not epochs:
                    continue
                values = np.array([[s[e] for e in epochs] for s in series])
                drawn[i] = ax.plot(epochs, values.mean(0), color=f"C{i % 10}", lw=1.2, label=loss_label(key, layout))[0]
                ax.fill_between(epochs, values.min(0), values.max(0), color=f"C{i % 10}", alpha=0.2, lw=0)
            if column == "memorised" and rho == 0:
                ax.text(0.5, 0.5, "ρ = 0: nothing corrupted", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(f"ρ = {rho:g}", fontsize=9)
            ax.locator_params(axis="x", integer=True)  # epochs
            ax.grid(alpha=0.3)
        panels[0].set_ylabel(ylabel)
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    if drawn:
        fig.tight_layout()
        handles = [drawn[i] for i in sorted(drawn)]  # in layout order, whichever panel drew each first
        fig.legend(handles, [h.get_label() for h in handles], loc="center left", bbox_to_anchor=(1.0, 0.5),
                   fontsize=8, title="line: mean over trials\nband: min to max", title_fontsize=8)
        fig.suptitle(title, y=1.02)
        results.save_figure(fig, stem)
    plt.close(fig)


def tau_sweep_figure(dataset, rows, out, plt):
    """Test accuracy against tau (log axis), per rho, for each partially Huberised loss."""
    sweeps = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if row["loss"] in grid.BASE and row.get("tau") and not row.get("clip_norm"):
            sweeps[(row["loss"], float(row["rho"]))][float(row["tau"])].append(float(row["test_acc"]))
    losses_swept = sorted({loss for (loss, _), by_tau in sweeps.items() if len(by_tau) > 1})
    if not losses_swept:
        return
    fig, axes = plt.subplots(1, len(losses_swept), figsize=(5 * len(losses_swept), 3.6), squeeze=False)
    for ax, loss in zip(axes[0], losses_swept):
        for i, rho in enumerate(sorted(rho for (l, rho) in sweeps if l == loss)):
            by_tau = sweeps[(loss, rho)]
            taus = sorted(by_tau)
            means, ses = zip(*(mean_se(by_tau[t]) for t in taus))
            ax.errorbar(taus, means, yerr=[s or 0 for s in ses], marker="o", capsize=3, color=f"C{i}",
                        label=f"ρ = {rho:g}")
        ax.set_xscale("log")
        ax.set(xlabel="τ", ylabel="test accuracy (%)", title=f"{dataset}: {grid.NAMES[loss]}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    results.save_figure(fig, os.path.join(out, "figures", f"{dataset}_tau_sweep"))
    plt.close(fig)


def tuned_figure(stem, title, records, plt):
    """The fair comparison's sensitivity figure (stem.png/.pdf): per tuned loss (rows) and rho
    (columns), test accuracy against the loss's parameter at the final epoch (solid) and stopped early
    (dashed), mean ± s.e. over trials; the noisy-validation choices marked (filled star: final; open
    star: stopped early); CE as horizontal lines. records: selection.outcomes of one dataset."""
    tuned = [f for f in grid.TUNE if f.param and any(r["key"] == f.key for r in records)]
    rhos = sorted({r["rho"] for r in records})
    if not tuned or not rhos:
        return
    at = {(r["key"], r["rho"]): r for r in records}
    fig, axes = plt.subplots(len(tuned), len(rhos), figsize=(3.2 * len(rhos), 2.5 * len(tuned)), squeeze=False,
                             sharey="col")
    for family, panels in zip(tuned, axes):
        for ax, rho in zip(panels, rhos):
            r, ce = at.get((family.key, rho)), at.get(("ce", rho))
            for name, style, mark, color in (("final", "-", "index", "C0"), ("early", "--", "index_early", "C1")):
                if ce and ce["curve"][0][name][0] is not None:
                    ax.axhline(ce["curve"][0][name][0], color="gray", ls=style, lw=1)
                if r is None:
                    continue
                points = [(c["value"], *c[name]) for c in r["curve"] if c[name][0] is not None]
                if points:
                    ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] or 0 for p in points],
                                color=color, ls=style, marker="o", ms=3, capsize=2)
                if r.get(mark) is not None:
                    c = r["curve"][r[mark]]
                    ax.plot([c["value"]], [c[name][0]], marker="*", ms=13, color=color,
                            mfc=color if name == "final" else "none", ls="none")
            if family.param != "q":
                ax.set_xscale("log")
            ax.set_xticks(family.values, [f"{v:g}" for v in family.values])  # the candidates, plainly
            ax.minorticks_off()
            ax.set_title(f"{family.label}, ρ = {rho:g}", fontsize=8)
            ax.grid(alpha=0.3, which="both")
            ax.tick_params(labelsize=7)
            ax.set_xlabel(family.param, fontsize=8)
        panels[0].set_ylabel("test accuracy (%)", fontsize=8)
    handles = [plt.Line2D([], [], color="C0", marker="o", label="final epoch"),
               plt.Line2D([], [], color="C1", ls="--", marker="o", label="stopped early (best noisy-val epoch)"),
               plt.Line2D([], [], color="C0", marker="*", ms=12, ls="none", label="chosen on noisy validation (final)"),
               plt.Line2D([], [], color="C1", marker="*", ms=12, mfc="none", ls="none",
                          label="chosen on noisy validation (stopped early)"),
               plt.Line2D([], [], color="gray", label="CE (final; dashed: stopped early)")]
    fig.tight_layout()
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3, fontsize=8)
    fig.suptitle(title, y=1.01)
    results.save_figure(fig, stem)
    plt.close(fig)
