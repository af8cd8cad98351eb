"""The figures of aggregate.py (matplotlib is passed in, imported only when figures are drawn)."""
import os
from collections import defaultdict

import numpy as np

import grid
import results
from tables import load_epochs, loss_key, loss_label, loss_sort, mean_se, number, reference_key


def accuracy_figure(dataset, table, rhos, refs, out, plt):
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
                   if (k := reference_key(dataset, e["key"], rho)) in refs and source in refs[k]]
            if pts:
                wheres[source] |= {where for *_, where in pts}
                ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] or 0 for p in pts], color=color,
                            marker=marker, ms=5, ls="none", capsize=2, mfc="none" if marker == "s" else color)
    title = f"{dataset}: test accuracy, mean ± s.e. over trials"
    if wheres["reproduction"] or wheres["original"]:
        for source, marker, name in (("reproduction", "s", "reproduction"), ("original", "x", "original paper")):
            if wheres[source]:
                ax.scatter([], [], color="gray", marker=marker, facecolors="none" if marker == "s" else "gray",
                           label=f"{name}: {'; '.join(sorted(wheres[source]))}")
        title = f"{dataset}: ours (lines) and published (markers)"
    ax.set(xlabel="label noise ρ", ylabel="test accuracy (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    results.save_figure(fig, os.path.join(out, "figures", f"{dataset}_accuracy"))
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
    keys = sorted({key for key, _ in curves}, key=lambda k: loss_sort(k, dataset))
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
                        label=loss_label(key, dataset))
                drawn = True
            ax.set(title=f"ρ = {rho:g}", xlabel="epoch")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel(ylabel)
        if drawn:
            axes[0][-1].legend(fontsize=7)
            fig.suptitle(f"{dataset}: {ylabel} per epoch (mean over trials)", y=1.03)
            results.save_figure(fig, os.path.join(out, "figures", f"{dataset}_{name}"))
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
            stats_ = [mean_se(by_tau[t]) for t in taus]
            ax.errorbar(taus, [m for m, _ in stats_], yerr=[s or 0 for _, s in stats_], marker="o", capsize=3,
                        color=f"C{i}", label=f"ρ = {rho:g}")
        ax.set_xscale("log")
        ax.set(xlabel="τ", ylabel="test accuracy (%)", title=f"{dataset}: {grid.NAMES[loss]}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    results.save_figure(fig, os.path.join(out, "figures", f"{dataset}_tau_sweep"))
    plt.close(fig)
