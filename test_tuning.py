"""The fair comparison (run_all.sh --tune, selection.py, docs/tuning.md): its cells are the grid, the
choice reads noisy validation data only (ties to the first listed candidate, no choice while a
candidate is missing), early stopping takes the validation peak, its runs stay out of the report's
tables, and noisy-validation accuracy ranks models as clean accuracy does under symmetric noise.
run_all.sh's engine runs in this process (conftest.run_grid)."""
import math
import os
import re
import shlex

import numpy as np
import pytest
import torch

import aggregate
import conftest
import data
import grid
import grid_cli
import selection
from conftest import run_grid, summary_row
from test_pipeline import FAKE_SBATCH
from results import read_csv

FAMILIES = {f.key: f for f in grid.TUNE}


# ---------------------------------------------------------------------------------------------
# The cells.

def test_tune_list_shows_every_candidate_and_the_estimate():
    result = run_grid("--tune", "--memorisation", "--list")
    ids = [line.split()[1] for line in result.stdout.splitlines()]
    n_candidates = sum(len(f.candidates()) for f in grid.TUNE)
    assert len(ids) == n_candidates * len(grid.TUNE_STUDY["rhos"]) * grid.TUNE_STUDY["trials"] == 228
    assert ids[0] == "memorisation-tune-fashion-mnist-ce-rho0-seed0"
    assert "memorisation-tune-fashion-mnist-phuber_gce-tau5-rho0.6-seed2" in ids
    assert re.search(r"time estimate: 228 training cells, 2 at a time .*about \d+\.\d h", result.stderr)
    report = grid_cli.parse_grid(["--tune", "--list"]).cells  # the report's datasets and settings, on GPUs
    assert len(report) == n_candidates * 4 * 3 * 3
    assert "RTX 2080 Ti" in grid.estimate(report[:1])  # (--list checks and estimates 684 cells: seconds)


def test_tune_cells_hold_out_noisy_validation_data_with_the_study_budget(tmp_path):
    out = tmp_path / "results"
    lines = run_grid("--tune", "--memorisation", "--losses", "gce", "--rhos", "0.6", "--trials", "2", "--dry-run",
                     "--out", str(out)).stdout.splitlines()
    assert len(lines) == 4 * 2
    for line, (q, seed) in zip(lines, [(q, s) for q in ("0.3", "0.5", "0.7", "0.9") for s in "01"]):
        argv = shlex.split(line)
        assert argv[1].endswith("train_mnist.py")
        assert " ".join(argv[2:]) == (f"--dataset fashion-mnist --loss gce --q {q} --rho 0.6 --seed {seed} "
                                      f"--val-split 0.1 {' '.join(grid.TUNE_STUDY['flags'])} "
                                      f"--out {out / 'memorisation' / 'tune'} --resume")


def test_every_family_has_a_source_and_ce_is_the_untuned_baseline():
    assert FAMILIES["ce"].param is None and len(FAMILIES["ce"].candidates()) == 1
    assert {"ce+clip", "gce", "phuber_ce", "phuber_gce", "ce+logitclip"} <= set(FAMILIES)
    assert any(t < 5 for t in FAMILIES["phuber_ce"].values)
    assert all(list(f.values) == sorted(f.values) for f in grid.TUNE)  # listed in order: ties go to the first
    source = open(os.path.join(conftest.ROOT, "grid.py"), encoding="utf-8").read()
    block = source[source.index("TUNE = ("):source.index("\n)\n", source.index("TUNE = ("))]
    for family in grid.TUNE[1:]:  # a comment with the range's source right above each tuned family
        above = block[:block.index(f'Family("{family.key}"')].rstrip().splitlines()
        assert above[-1].strip().startswith("#") or above[-2].strip().startswith("#"), family.key


@pytest.mark.parametrize("args, message", [
    (["--tune", "--tune-tau"], "--tune takes no --tune-tau"),
    (["--tune", "--taus", "2,5"], "--tune takes no --taus"),
    (["--tune", "--logit-clip", "1"], "--tune takes no --logit-clip"),
    (["--tune", "--human-noise"], "--tune takes no --human-noise"),
    (["--tune", "--losses", "linear"], "not allowed with --tune"),
    (["--tune", "--datasets", "synthetic,mnist"], "'synthetic' is not allowed with --tune"),
])
def test_tune_refuses_what_it_cannot_combine_with(args, message):
    result = run_grid(*args, "--list", check=False)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.splitlines()) == 1


# ---------------------------------------------------------------------------------------------
# The choice, on hand-made runs.

class NoTest(dict):
    """A result row whose test accuracy cannot be read: the choice must not need it."""

    def __getitem__(self, key):
        if key == "test_acc":
            raise AssertionError("the choice read test accuracy")
        return super().__getitem__(key)

    def get(self, key, default=None):
        if key == "test_acc":
            raise AssertionError("the choice read test accuracy")
        return super().get(key, default)


def runs(vals, tests=None, early=None):
    """[{seed: run}] per candidate from {candidate: [val per seed]} (and test accuracies)."""
    return [{seed: dict(val_acc=str(v), test_acc=str(tests[i][seed] if tests else 50.0),
                        early=early[i][seed] if early else None) for seed, v in enumerate(vs)}
            for i, vs in enumerate(vals)]


def test_the_choice_never_reads_test_accuracy():
    candidates = [{s: NoTest(r) for s, r in by.items()} for by in runs([[30, 31, 32], [33, 33, 33], [20, 21, 22]])]
    assert selection.choose_among(candidates, early=False) == (1, None)
    for by in candidates:
        for r in by.values():
            r["early"] = NoTest(val_acc="40", test_acc="1")
    assert selection.choose_among(candidates, early=True)[0] == 0  # all equal: the first listed
    assert selection.stopped_early([NoTest(epoch="1", val_acc="3"), NoTest(epoch="2", val_acc="5")]) == 1


def test_test_accuracy_does_not_move_the_choice(tmp_path):
    """Whatever the test accuracies, the chosen candidates stay; the oracle follows them."""
    rng = np.random.default_rng(0)
    vals = [[31.0, 32.0, 30.0], [35.0, 34.0, 36.0], [20.0, 21.0, 22.0], [33.0, 33.0, 33.0]]
    chosen = set()
    for _ in range(5):
        tests = rng.uniform(10, 90, size=(4, 3)).tolist()
        groups = {("mnist", (), 0.6, "phuber_ce"): runs(vals, tests)}
        (record,) = selection.outcomes(groups)
        chosen.add(record["chosen"])
        best = int(np.argmax(np.mean(tests, axis=1)))
        assert record["oracle"].endswith(f"--tau {grid.number_text(FAMILIES['phuber_ce'].values[best])}")
        assert record["test_acc"] == pytest.approx(np.mean(tests[1]))  # the chosen candidate's own runs
    assert chosen == {"train_mnist.py --loss phuber_ce --tau 5"}


def test_ties_go_to_the_first_listed_candidate():
    assert selection.choose([{0: 30.0, 1: 32.0}, {0: 31.0, 1: 31.0}, {0: 32.0, 1: 30.0}]) == (0, None)
    assert selection.choose([{0: 30.0}, {0: 31.0}, {0: 31.0}]) == (1, None)
    # equal sums in another order round differently in floating point: still a tie
    a, b = [33.7, 31.9, 32.1], [32.1, 31.9, 33.7]
    assert sum(a) < sum(b)
    assert selection.choose([dict(enumerate(a)), dict(enumerate(b))]) == (0, None)


def test_a_missing_candidate_or_trial_means_no_choice(tmp_path):
    assert selection.choose([{0: 30.0}, {}, {0: 31.0}]) == (None, "1 of 3 candidates not run")
    index, why = selection.choose([{0: 30.0, 1: 31.0}, {0: 40.0}])
    assert index is None and "different trials" in why
    folder = tmp_path / "tune"
    rows = [tune_row("phuber_ce", 0.6, seed, tau=tau, val=30 + tau / 10, test=60) for tau in (2.0, 5.0, 10.0)
            for seed in range(3)]  # tau 50 never ran
    rows += [tune_row("ce", 0.6, seed, val=30, test=55) for seed in range(3)]
    conftest.write_csv_rows(folder / "summary.csv", rows)
    assert aggregate.main(["--results", str(tmp_path), "--no-plot"]) == 0
    table = (tmp_path / "tables" / "mnist_tuned.md").read_text()
    assert "no choice: 1 of 4 candidates not run" in table
    (record,) = [r for r in read_csv(tmp_path / "tables" / "mnist_tuned.csv") if r["loss"] == "PHuber-CE"]
    assert record["chosen"] == "" and record["test_acc"] == "" and record["no_choice"] == "1 of 4 candidates not run"


def test_early_stopping_takes_the_validation_peak():
    epochs = [dict(epoch=str(e), val_acc=str(v), test_acc=str(t))
              for e, v, t in ((1, 30, 70), (2, 34, 80), (3, 34, 90), (4, 33, 95))]
    assert selection.stopped_early(epochs) == 1  # epoch 2: the first of the two peaks, not the test peak
    assert selection.stopped_early([dict(epoch="1", val_acc="")]) is None
    assert selection.stopped_early([]) is None


# ---------------------------------------------------------------------------------------------
# aggregate.py on a hand-made results folder.

def tune_row(loss, rho, seed, val, test, **params):
    extra = {k: v for k, v in params.items()}
    if loss == "phuber_gce":
        extra.setdefault("q", 0.7)
    row = summary_row("mnist", loss, rho, seed, test, val_split=0.1, val_acc=val, **extra)
    row["run"] = "tune-" + row["run"]
    return row


@pytest.fixture
def tuned_folder(tmp_path):
    """CE and PHuber-CE at rho 0.6, 3 seeds, with epochs: CE memorises (its test accuracy falls after
    epoch 2, where its validation accuracy peaks); PHuber-CE tau 5 is best on validation."""
    rows = []
    for seed in range(3):
        rows.append(tune_row("ce", 0.6, seed, val=30.0, test=60.0 + seed))
        for tau, val, test in ((2.0, 33.0, 80.0), (5.0, 34.0 + seed, 82.0 + seed), (10.0, 31.0, 65.0),
                               (50.0, 30.5, 61.0)):
            rows.append(tune_row("phuber_ce", 0.6, seed, tau=tau, val=val, test=test))
    folder = tmp_path / "tune"
    conftest.write_csv_rows(folder / "summary.csv", rows)
    for row in rows:
        final_val, final_test = float(row["val_acc"]), float(row["test_acc"])
        if row["loss"] == "ce":  # CE's peak: epoch 2 (val 33, test 75 + seed)
            curve = [(31.0, 70.0), (33.0, 75.0 + row["seed"]), (32.0, 68.0), (final_val, final_test)]
        else:
            curve = [(final_val - 2, final_test - 5), (final_val - 1, final_test - 2), (final_val, final_test)] * 1
        conftest.write_csv_rows(folder / "runs" / row["run"] / "epochs.csv",
                                [dict(epoch=e + 1, val_acc=v, test_acc=t) for e, (v, t) in enumerate(curve)])
    main = [summary_row("mnist", "ce", 0.6, seed, 99.0) for seed in range(3)]  # the report's grid beside it
    conftest.write_csv_rows(tmp_path / "summary.csv", main)
    return tmp_path


def test_tuned_table_by_hand(tuned_folder):
    assert aggregate.main(["--results", str(tuned_folder), "--no-plot"]) == 0
    records = {r["loss"]: r for r in read_csv(tuned_folder / "tables" / "mnist_tuned.csv")}
    assert set(records) == {"CE", "PHuber-CE"}
    ph, ce = records["PHuber-CE"], records["CE"]
    for column in ("loss", "rho", "chosen", "test_acc", "test_acc_se", "test_acc_early", "test_acc_early_se", "n"):
        assert column in ph
    assert ph["chosen"] == "train_mnist.py --loss phuber_ce --tau 5" and ph["n"] == "3"
    assert float(ph["test_acc"]) == pytest.approx(83.0)  # 82, 83, 84
    assert float(ph["test_acc_se"]) == pytest.approx(1 / math.sqrt(3))
    assert float(ph["minus_ce"]) == pytest.approx(22.0)  # 82-60, 83-61, 84-62: no spread, interval is the point
    assert float(ce["test_acc_early"]) == pytest.approx(76.0)  # 75, 76, 77 at CE's validation peak, epoch 2
    assert ce["chosen_early"] == "train_mnist.py --loss ce"
    assert float(ph["minus_ce_early"]) == pytest.approx(83.0 - 76.0)
    assert ph["oracle"] == ph["chosen"] and float(ph["oracle_gap"]) == 0.0
    table = (tuned_folder / "tables" / "mnist_tuned.md").read_text()
    assert "| PHuber-CE | 83.0 ± 0.6 / 83.0 ± 0.6 |" in table and "oracle" in table


def test_tuned_runs_never_enter_the_reports_tables(tuned_folder):
    assert aggregate.main(["--results", str(tuned_folder), "--no-plot"]) == 0
    main = read_csv(tuned_folder / "tables" / "mnist.csv")
    assert {r["label"] for r in main if r["n"] not in ("", "0")} == {"CE"}
    assert {float(r["mean"]) for r in main if r["mean"]} == {99.0}


@pytest.mark.slow  # matplotlib: seconds
def test_tuned_figure_is_drawn(tuned_folder):
    assert aggregate.main(["--results", str(tuned_folder)]) == 0
    assert (tuned_folder / "figures" / "mnist_tuned.png").stat().st_size > 0


# ---------------------------------------------------------------------------------------------
# When noisy-validation accuracy ranks models as clean accuracy does (docs/tuning.md).

@pytest.mark.parametrize("classes", [2, 10, 100])
def test_noisy_accuracy_is_affine_in_clean_accuracy_under_symmetric_noise(classes):
    """Constructed classifiers of known clean accuracy on a constructed set: their expected accuracy
    against symmetric noisy labels, from the transition matrix, is the affine map, increasing while
    rho < (C - 1)/C and decreasing beyond it."""
    rng = np.random.default_rng(0)
    n = 1000
    labels = rng.integers(0, classes, n)
    edge = (classes - 1) / classes  # rho at which noisy labels carry no information
    for rho in (0.0, 0.2, 0.6, edge - 0.05, edge + 0.5 / classes):
        transition = np.full((classes, classes), rho / (classes - 1))
        np.fill_diagonal(transition, 1 - rho)
        expected = []
        for correct in (0, 250, 500, 900, 1000):
            pred = labels.copy()
            wrong = rng.permutation(n)[: n - correct]
            pred[wrong] = (labels[wrong] + rng.integers(1, classes, len(wrong))) % classes
            noisy = transition[labels, pred].mean()  # P(noisy label = prediction), exactly
            assert noisy == pytest.approx(selection.noisy_accuracy(correct / n, rho, classes), abs=1e-12)
            expected.append(noisy)
        steps = np.diff(expected)
        if rho < edge:
            assert (steps > 0).all()
        elif rho > edge:
            assert (steps < 0).all()
        if rho != edge:
            assert selection.clean_accuracy(expected[2], rho, classes) == pytest.approx(0.5)


def test_noisy_accuracy_of_a_drawn_noisy_set_follows_the_map():
    """One draw of the project's own symmetric noise: the realised noisy accuracy of a classifier of
    clean accuracy 0.7 is within 4.5 standard errors of the map (fails for < 1 in 100,000 draws)."""
    n, classes, rho, clean = 200_000, 10, 0.6, 0.7
    generator = torch.Generator().manual_seed(1)
    labels = torch.randint(0, classes, (n,), generator=generator)
    pred = labels.clone()
    wrong = torch.randperm(n, generator=generator)[: int(n * (1 - clean))]
    pred[wrong] = (labels[wrong] + torch.randint(1, classes, (len(wrong),), generator=generator)) % classes
    noisy = data.add_label_noise(labels, rho, classes, "symmetric", data.flip_map({}, classes), generator=generator)
    p = selection.noisy_accuracy(clean, rho, classes)
    assert abs((pred == noisy).double().mean().item() - p) < 4.5 * math.sqrt(p * (1 - p) / n)
    with pytest.raises(ValueError, match="no information"):
        selection.clean_accuracy(0.1, 0.9, 10)


# ---------------------------------------------------------------------------------------------
# End to end.

@pytest.mark.slow
def test_tune_quick_runs_the_protocol_into_its_tables(mnist_dir, tmp_path):
    out = tmp_path / "results"
    run_grid("--tune", "--quick", "--datasets", "mnist", "--losses", "ce,phuber_gce", "--rhos", "0.6",
             "--out", str(out), "--", "--data-dir", mnist_dir, "--device", "cpu", "--limit-test", "64")
    records = read_csv(out / "tables" / "mnist_tuned.csv")
    assert [(r["loss"], r["rho"]) for r in records] == [("CE", "0.6"), ("PHuber-GCE", "0.6")]
    assert all(r["chosen"].startswith("train_mnist.py --loss ") and r["n"] == "1" for r in records)
    assert "not results" in (out / "tables" / "mnist_tuned.md").read_text()
    assert (out / "figures" / "mnist_tuned.png").exists()
    assert len(read_csv(out / "tune" / "summary.csv")) == 1 + 3  # CE, and PHuber-GCE's three taus
    assert not (out / "tables" / "mnist.csv").exists()  # nothing of the report's grid ran


def test_slurm_array_task_i_runs_the_tune_cell_i(tmp_path):
    """--slurm --tune: one array over the comparison's cells; task i finds cell i of the same selection."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH)
    (bin_dir / "sbatch").chmod(0o755)
    log = tmp_path / "sbatch.log"
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SBATCH_LOG": str(log)}
    selection_args = ["--tune", "--datasets", "mnist", "--losses", "ce,gce", "--rhos", "0.6,0", "--out", str(tmp_path)]
    out = run_grid("--slurm", *selection_args, env=env).stdout
    assert "submitted job array 101 (30 cells)" in out
    grid_call = log.read_text().strip("\n").split("\n\n")[0].splitlines()
    worker = shlex.split(grid_call[grid_call.index("--wrap") + 1].replace("$SLURM_ARRAY_TASK_ID", "7"))
    assert worker[:2] == ["bash", os.path.join(conftest.ROOT, "run_all.sh")]
    assert "--tune" in worker and worker[worker.index("--rhos") + 1] == "0.6,0"  # the arguments as given
    task = run_grid(*worker[2:], "--dry-run")  # what task 7 runs (a task ignores --slurm)
    listed = run_grid(*selection_args, "--dry-run").stdout.splitlines()
    assert task.stdout.strip() == listed[7] and "--loss gce --q 0.5 --rho 0.6 --seed 1 --val-split 0.1" in listed[7]
