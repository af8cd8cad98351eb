"""The memorisation benchmark (run_all.sh --memorisation, docs/memorisation.md): its grid is the one
the docs describe, and aggregate.py turns its own results folder into its own tables and figure,
never into the report's tables. run_all.sh's engine runs in this process (conftest.run_grid)."""
import math
import os
import re
import shlex

import pytest

import aggregate
import conftest
import grid
import grid_cli
from conftest import run_grid, summary_row
from results import read_csv

# What docs/memorisation.md promises: each row's flags, in the order of its tables.
ROWS = [("CE", "--loss ce"), ("CE + clipping", "--loss ce --clip-norm 0.1"), ("Linear", "--loss linear"),
        ("GCE", "--loss gce --q 0.7"), ("PHuber-CE τ = 2", "--loss phuber_ce --tau 2"),
        ("PHuber-CE τ = 5", "--loss phuber_ce --tau 5"), ("PHuber-CE τ = 10", "--loss phuber_ce --tau 10"),
        ("PHuber-CE τ = 50", "--loss phuber_ce --tau 50"),
        ("PHuber-GCE τ = 10", "--loss phuber_gce --tau 10 --q 0.7")]
DATASETS, RHOS, SEEDS = ("fashion-mnist", "mnist"), ("0", "0.4", "0.6"), ("0", "1", "2")
BUDGET = "--epochs 30 --lr-decay 1 --weight-decay 0"


def test_the_grid_is_the_documented_one(tmp_path):
    out = tmp_path / "results"
    commands = [shlex.split(line) for line in run_grid("--memorisation", "--dry-run", "--out", str(out))
                .stdout.splitlines()]
    found = []
    for argv in commands:
        flags = " ".join(argv[2:])
        assert f" {BUDGET} --out {out / 'memorisation'} --resume" in flags  # its own results folder
        dataset, rho, seed = (argv[argv.index(f) + 1] for f in ("--dataset", "--rho", "--seed"))
        loss = flags.split(f"--dataset {dataset} ")[1].split(" --rho")[0]
        found.append((dataset, loss, rho, seed))
        assert argv[1].endswith("train_mnist.py")
    assert found == [(d, flags, rho, seed) for d in DATASETS for _, flags in ROWS for rho in RHOS for seed in SEEDS]
    assert [r.label for r in grid.memorisation_rows()] == [label for label, _ in ROWS]
    listing = run_grid("--memorisation", "--list").stdout.splitlines()
    ids = [c.id for c in grid.cells(datasets=DATASETS, rhos=(0.0, 0.4, 0.6), trials=3, memorisation=True)]
    assert [line.split()[1] for line in listing] == ids and len(ids) == 2 * 9 * 3 * 3
    assert listing[0].split() == ["0", "memorisation-fashion-mnist-ce-rho0-seed0"]


def test_the_listing_ends_with_a_time_estimate():
    result = run_grid("--memorisation", "--list")
    others = [line for line in (result.stdout + result.stderr).splitlines()
              if not re.fullmatch(r"\s*\d+\s+memorisation-\S+", line)]
    assert any(re.search(r"\d+\s*(h|hours?|m|min|minutes?)\b", line) for line in others)


def test_the_time_estimate_counts_the_pass_through_flags():
    (cell, *_) = grid_cli.parse_grid(["--memorisation"]).cells  # 30 epochs
    start = grid.CPU["start_seconds"]
    five = grid.cell_cost(cell, True, ["--epochs", "5"])
    assert five == grid.cell_cost(cell, True, ["--epochs=5"]) != grid.cell_cost(cell, True)
    assert (five - start) * 6 == pytest.approx(grid.cell_cost(cell, True) - start)
    bad = run_grid("--memorisation", "--list", "--", "--epochs", "x", check=False)  # checked before the estimate
    assert bad.returncode == 2 and "argument --epochs: invalid int value: 'x'" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and bad.stdout == ""


# ---------------------------------------------------------------------------------------------
# aggregate.py on a hand-made memorisation folder beside a main grid.

LOSSES = [("ce", {}), ("gce", dict(q=0.7)), ("phuber_ce", dict(tau=2.0)), ("phuber_ce", dict(tau=10.0)),
          ("phuber_gce", dict(tau=10.0, q=0.7))]
# CE at rho 0.6, per seed: test accuracy per epoch (peaks 86 at epoch 2, 87 at 3, 88 at 2 and 3: the
# first counts) and memorised per epoch.
CE_CURVES = {0: ([80, 86, 84, 60], [5, 10, 15, 20]), 1: ([80, 84, 87, 62], [5, 10, 15, 30]),
             2: ([80, 88, 88, 64], [5, 10, 15, 40])}


def curves(i, rho, seed):
    """Test accuracy and memorised per epoch of loss LOSSES[i]: CE's above; the others end i + seed
    points above CE's final accuracy (PHuber-CE tau 2 minus CE: 2, 3, 4)."""
    if i == 0 and rho == 0.6:
        return CE_CURVES[seed]
    final = CE_CURVES[seed][0][-1] + i + seed
    return [80, 85, 83, final], ([4, 6, 8, 10] if rho else [""] * 4)


@pytest.fixture
def with_memorisation(tmp_path):
    main = [summary_row("mnist", "ce", 0.6, seed, 90.0 + seed) for seed in range(3)]
    conftest.write_csv_rows(tmp_path / "summary.csv", main)
    folder = tmp_path / "memorisation"
    rows = []
    for i, (loss, params) in enumerate(LOSSES):
        for rho in (0.0, 0.6):
            for seed in range(3):
                acc, memorised = curves(i, rho, seed)
                run = f"memo-{loss}-{i}-{rho}-{seed}"
                rows.append(summary_row("fashion-mnist", loss, rho, seed, acc[-1], run=run, memorised=memorised[-1],
                                        epochs=30, lr_decay=1.0, weight_decay=0.0, **params))
                if (i, rho, seed) == (1, 0.6, 1):
                    continue  # GCE, rho 0.6, seed 1: no epochs.csv
                epochs = [dict(epoch=e + 1, test_acc=a, memorised=m) for e, (a, m) in enumerate(zip(acc, memorised))]
                if (i, rho, seed) == (1, 0.6, 2):
                    epochs[1]["test_acc"] = "eighty"  # seed 2: a malformed row
                    epochs = epochs[1:2]
                conftest.write_csv_rows(folder / "runs" / run / "epochs.csv", epochs)
    # the benchmark on mnist too: the report's mnist table must not take these
    rows += [summary_row("mnist", "ce", 0.6, seed, 10.0, run=f"memo-mnist-{seed}", epochs=30, lr_decay=1.0,
                         weight_decay=0.0) for seed in range(3)]
    conftest.write_csv_rows(folder / "summary.csv", rows)
    return tmp_path


def cells(path):
    return {(r["label"], float(r["rho"])): r for r in read_csv(path)}


def test_aggregate_writes_the_benchmarks_tables_apart(with_memorisation, capsys):
    root, tables = with_memorisation, with_memorisation / "tables"
    assert aggregate.main(["--results", str(root), "--no-plot"]) == 0
    captured = capsys.readouterr()
    assert "memorisation fashion-mnist (30 runs)" in captured.out and "memorisation mnist (3 runs)" in captured.out
    # missing and malformed epochs.csv: named, skipped
    assert "memo-gce-1-0.6-1/epochs.csv" in captured.err and "memo-gce-1-0.6-2/epochs.csv line 2" in captured.err
    assert "Traceback" not in captured.err

    # the report's tables: the main grid's runs only
    main = cells(tables / "mnist.csv")
    assert list(main) == [("CE", 0.6)] and main[("CE", 0.6)]["n"] == "3" and float(main[("CE", 0.6)]["mean"]) == 91.0
    assert not (tables / "fashion-mnist.md").exists()

    # final test accuracy, rows in the benchmark's order (PHuber-CE tau 2 before tau 10)
    md = (tables / "memorisation_fashion-mnist.md").read_text()
    labels = [line.split(" | ")[0][2:] for line in md.splitlines() if line.startswith("| ") and "Loss" not in line]
    assert labels == ["CE", "GCE", "PHuber-CE τ = 2", "PHuber-CE τ = 10", "PHuber-GCE τ = 10"]
    final = cells(tables / "memorisation_fashion-mnist.csv")
    assert float(final[("CE", 0.6)]["mean"]) == 62.0
    assert float(final[("CE", 0.6)]["se"]) == pytest.approx(2 / math.sqrt(3))
    assert "--epochs 30 --lr-decay 1 --weight-decay 0" in md

    # the peak over epochs and the epoch of each trial's peak
    peak = (tables / "memorisation_fashion-mnist_peak.md").read_text()
    assert "| CE | 85.0 ± 0.0 (ep 2, 2, 2) | 87.0 ± 0.6 (ep 2, 3, 2) |" in peak
    assert "| GCE | 85.0 ± 0.0 (ep 2, 2, 2) | 85.0 (n=1) (ep 2) |" in peak  # seeds 1, 2: no usable epochs
    assert "never used to choose anything" in peak and "test set" in peak
    peaks = cells(tables / "memorisation_fashion-mnist_peak.csv")
    assert float(peaks[("CE", 0.6)]["mean"]) == 87.0 and peaks[("CE", 0.6)]["epochs"] == "2 3 2"

    # memorised at the final epoch: rho = 0 has nothing corrupted, so no column
    memorised = cells(tables / "memorisation_fashion-mnist_memorised.csv")
    assert float(memorised[("CE", 0.6)]["mean"]) == 30.0 and ("CE", 0.0) not in memorised
    assert "| CE | 30.0 ± 5.8 |" in (tables / "memorisation_fashion-mnist_memorised.md").read_text()

    # each loss minus CE on the same seeds: PHuber-CE tau 2 is 2, 3, 4 points above
    paired = {(r["loss"], float(r["rho"])): r for r in read_csv(tables / "memorisation_fashion-mnist_paired.csv")}
    tau2 = paired[("PHuber-CE τ = 2", 0.6)]
    half = 4.302653 * 1.0 / math.sqrt(3)  # t(0.975, 2) x sd / sqrt(n)
    assert tau2["base"] == "CE" and float(tau2["mean_diff"]) == pytest.approx(3.0)
    assert float(tau2["ci_low"]) == pytest.approx(3 - half, abs=1e-3) and tau2["n"] == "3"
    assert ("CE", 0.6) not in paired and len(paired) == 4 * 2


@pytest.mark.slow  # matplotlib: seconds
def test_aggregate_draws_the_benchmarks_figure(with_memorisation):
    root = with_memorisation
    assert aggregate.main(["--results", str(root)]) == 0
    figures = set(os.listdir(root / "figures"))
    assert {"memorisation_fashion-mnist.png", "memorisation_fashion-mnist.pdf"} <= figures
    assert "memorisation_mnist.png" not in figures  # its runs have no epochs.csv: nothing to draw
