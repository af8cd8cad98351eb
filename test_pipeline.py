"""Tests for run_all.sh (grid, --task, skip/resume, --quick) and aggregate.py (hand-made results).

run_all.sh's engine runs in this process (conftest.run_grid); its cells are processes, as always."""
import math
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

import aggregate
import config
import conftest
import grid
import grid_cli
import results
from conftest import run_grid, summary_row
from results import read_csv


# ---------------------------------------------------------------------------------------------
# The grid.

@pytest.mark.parametrize("datasets,count", [("mnist", 72), ("cifar10", 72), ("cifar100", 84), ("synthetic", 2),
                                            ("fashion-mnist", 72), ("synthetic,mnist,cifar10,cifar100", 230)])
def test_grid_sizes(datasets, count):
    # the cells --list numbers, one a line (test_default_grid_is_the_reports); --list also checks each cell's
    # flags and estimates its time, a second per hundred cells
    assert len(grid_cli.parse_grid(["--datasets", datasets]).cells) == count


def test_default_grid_is_the_reports():
    cells = [line.split()[1] for line in run_grid("--list").stdout.splitlines()]
    assert cells[:2] == ["synthetic-long_servedio", "synthetic-ding"]
    assert "mnist-phuber_ce-tau10-rho0.6-seed2" in cells and "cifar10-phuber_ce-tau2-rho0-seed0" in cells
    assert "cifar100-phuber_ce-tau50-rho0.4-seed1" in cells and "cifar10-phuber_ce-tau10-rho0-seed0" not in cells
    assert "mnist-ce+clip-rho0.2-seed0" in cells and "mnist-phuber_gce-tau10-rho0-seed0" in cells
    assert len(cells) == len(set(cells))


def test_task_runs_the_listed_cell():
    listing = run_grid("--list", "--datasets", "mnist,cifar100", "--losses", "ce+clip,phuber_ce").stdout.splitlines()
    assert len(listing) == 4 * 3 * (2 + 3)  # mnist: 2 settings, cifar100: 3 (tau 10, 50)
    for line in listing[::13]:
        index, cell = line.split()
        command = run_grid("--datasets", "mnist,cifar100", "--losses", "ce+clip,phuber_ce", "--task", index,
                          "--dry-run").stdout.strip()
        dataset, rest = cell.split("-", 1)
        rho, seed = cell.split("-rho")[1].split("-seed")
        assert f"--dataset {dataset} " in command and f" --rho {rho} --seed {seed} " in command
        assert ("--clip-norm 0.1" in command) == ("ce+clip" in cell)
        if "tau" in rest:
            assert f"--tau {rest.split('tau')[1].split('-')[0]}" in command


def test_extra_losses_and_passthrough():
    out = run_grid("--datasets", "mnist", "--losses", "sce", "--rhos", "0.4", "--trials", "1", "--dry-run",
                  "--", "--amp", "bf16").stdout.strip()
    script = os.path.join(conftest.ROOT, "train_mnist.py")
    assert out == f"{sys.executable} {script} --dataset mnist --loss sce --rho 0.4 --seed 0 --out " \
                  f"{os.path.join(conftest.ROOT, 'results')} --resume --amp bf16"


@pytest.mark.parametrize("args,message", [
    (["--datasets", "imagenet"], "'imagenet'"), (["--losses", "huber"], "'huber'"), (["--trials", "0"], "'0'"),
    (["--task", "999", "--datasets", "mnist"], "'999'"), (["--rhos", "1.5"], "'1.5'"), (["--bogus"], "--bogus"),
])
def test_bad_options_exit_2(args, message):
    result = run_grid(*args, check=False)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------
# Running: skip, resume, unavailable data, the quick pipeline.

@pytest.mark.slow
def test_finished_cells_are_skipped_and_interrupted_ones_resume(data_root, tmp_path):
    # --task 0, as a SLURM array task runs it: the cell alone (the whole grid skips a finished cell in
    # test_reliability.py's test_a_failing_aggregation_fails_the_grid)
    common = ["--datasets", "mnist", "--losses", "ce", "--rhos", "0.2", "--trials", "1", "--task", "0", "--out",
              str(tmp_path), "--", "--data-dir", data_root, "--epochs", "12", "--limit-train", "64", "--limit-test", "64"]
    env = dict(os.environ, PYTHON=sys.executable)
    # start the cell and kill the whole run (SIGKILL: nothing can clean up) once its first checkpoint is there
    proc = subprocess.Popen(["bash", "run_all.sh", *common], cwd=conftest.ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    runs = tmp_path / "runs"
    deadline = time.time() + 120
    while not (runs.is_dir() and any((d / "checkpoint.pt").exists() for d in runs.iterdir())):
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    (run_dir,) = runs.iterdir()
    while results.lock_holder(str(run_dir)):  # the cell too has ended (its lock goes with it)
        assert time.time() < deadline
        time.sleep(0.01)
    assert not (tmp_path / "summary.csv").exists()
    first = run_grid(*common)
    assert "1 ran, 0 already finished" in first.stdout
    log = (tmp_path / "logs" / "mnist-ce-rho0.2-seed0.log").read_text()
    assert "resuming after epoch" in log and "final test accuracy" in log
    second = run_grid(*common)
    assert "0 ran, 1 already finished" in second.stdout
    assert len(read_csv(tmp_path / "summary.csv")) == 1  # never duplicated


@pytest.mark.slow
@pytest.mark.xdist_group("quick_grid")
def test_cpu_workers_share_cells_without_overlap(quick_grid):
    # conftest.quick_grid ran its grid with --cpu-workers 2: each mnist cell once, on the CPU
    assert "6 ran, 0 already finished" in quick_grid.stdout
    rows = read_csv(quick_grid.out / "summary.csv")
    assert sorted(r["rho"] for r in rows if r["dataset"] == "mnist") == ["0.0", "0.0", "0.4", "0.4"]
    assert all(r["device"] == "cpu" for r in rows)
    started = [line.split(": ", 1)[1].split(" (")[0] for line in quick_grid.stdout.splitlines() if "] cell " in line]
    assert len(started) == 6 == len(set(started))


@pytest.mark.parametrize("bad", [["--cpu-workers", "0"], ["--cpu-workers", "two"], ["--cpu-workers", "99999999999999"],
                                 ["--cpu-workers", "2", "--gpus", "0"], ["--cpu-workers", "1", "--slurm"]])
def test_bad_cpu_workers_are_refused(bad):
    refused = run_grid(*bad, "--datasets", "mnist", check=False, env={"CUDA_VISIBLE_DEVICES": "0"})
    assert refused.returncode == 2 and "--cpu-workers" in refused.stderr


@pytest.mark.slow
@pytest.mark.xdist_group("quick_grid")
def test_quick_pipeline_ends_with_tables_and_figures(quick_grid):
    # conftest.quick_grid: synthetic and mnist (ce, phuber_ce at rho 0, 0.4), and the CIFAR-10 cell on a CPU
    # with a cheaper network through the pass-through flags
    assert "1 ran" in quick_grid.cifar and "0 failed" in quick_grid.cifar
    out = str(quick_grid.out)
    rows = read_csv(os.path.join(out, "summary.csv"))
    assert len(rows) == 2 * 2 + 1 and {r["epochs"] for r in rows} == {"1"}
    tables, figures = os.listdir(os.path.join(out, "tables")), os.listdir(os.path.join(out, "figures"))
    for name in ("mnist.md", "mnist.tex", "mnist.csv", "cifar10.md", "synthetic_long_servedio_summary.csv",
                 "synthetic_ding_minimisers.csv"):
        assert name in tables, name
    assert "mnist_comparison.md" not in tables  # smoke runs (1 epoch, 256 samples) are set against no published number
    for name in ("mnist_accuracy.png", "mnist_accuracy.pdf", "mnist_curves.png", "mnist_memorisation.pdf",
                 "synthetic_long_servedio.png", "synthetic_ding.pdf"):
        assert name in figures, name
    table = open(os.path.join(out, "tables", "mnist.md")).read()
    assert "(n=1)" in table and "not results" in table


# ---------------------------------------------------------------------------------------------
# aggregate.py on hand-made results.

@pytest.fixture
def hand_made(tmp_path):
    rows = []
    for seed, (ce0, ce4, ph0, ph4) in enumerate([(99.0, 90.0, 98.0, 95.0), (98.0, 91.0, 98.5, 97.0),
                                                 (97.0, 92.0, 99.0, 98.0)]):
        rows += [summary_row("mnist", "ce", 0.0, seed, ce0), summary_row("mnist", "ce", 0.4, seed, ce4),
                 summary_row("mnist", "phuber_ce", 0.0, seed, ph0, tau=10.0),
                 summary_row("mnist", "phuber_ce", 0.4, seed, ph4, tau=10.0)]
    rows += [summary_row("mnist", "ce", 0.0, s, 97.0, clip_norm=0.1) for s in (0, 1)]  # two trials, rho 0 only
    conftest.write_csv_rows(tmp_path / "summary.csv", rows)
    return tmp_path


def table_cells(path):
    return {(r["label"], float(r["rho"])): r for r in read_csv(path)}


def test_aggregate_means_standard_errors_best_and_missing(hand_made):
    assert aggregate.main(["--results", str(hand_made), "--no-plot"]) == 0
    cells = table_cells(hand_made / "tables" / "mnist.csv")
    ce0 = cells[("CE", 0.0)]
    assert float(ce0["mean"]) == pytest.approx(98.0) and float(ce0["se"]) == pytest.approx(1 / math.sqrt(3))
    ph4 = cells[("PHuber-CE τ = 10", 0.4)]
    assert float(ph4["mean"]) == pytest.approx(96.6667, abs=1e-3)
    assert float(ph4["se"]) == pytest.approx(math.sqrt(((95 - 96.6667) ** 2 + (97 - 96.6667) ** 2 + (98 - 96.6667) ** 2) / 2 / 3), abs=1e-3)
    assert ph4["best"] == "True" and cells[("CE", 0.4)]["best"] == "False"
    assert cells[("PHuber-CE τ = 10", 0.0)]["best"] == "True"  # 98.5 beats CE's 98.0
    clip = cells[("CE + clipping", 0.0)]
    assert clip["n"] == "2" and cells[("CE + clipping", 0.4)]["mean"] == ""
    md = (hand_made / "tables" / "mnist.md").read_text()
    assert "| CE + clipping | 97.0 ± 0.0 (n=2) | - |" in md
    assert "**96.7 ± 0.9**" in md and "**98.5 ± 0.3**" in md
    tex = (hand_made / "tables" / "mnist.tex").read_text()
    assert r"\textbf{96.7 $\pm$ 0.9}" in tex
    comparison = (hand_made / "tables" / "mnist_comparison.md").read_text()
    assert "| CE | 0 | 98.0 ± 0.6 | 99.1 ± 0.1 | 98.7 | -1.1 | -0.7 |" in comparison


def test_aggregate_paired_interval_by_hand(hand_made):
    aggregate.main(["--results", str(hand_made), "--no-plot"])
    rows = {float(r["rho"]): r for r in read_csv(hand_made / "tables" / "mnist_paired.csv")}
    # rho 0.4: PHuber-CE - CE per seed = 5, 6, 6 -> mean 5.667, sd 0.5774, t(0.975, 2) = 4.3027
    half = 4.302653 * 0.5773503 / math.sqrt(3)
    assert float(rows[0.4]["mean_diff"]) == pytest.approx(17 / 3, abs=1e-3)
    assert float(rows[0.4]["ci_low"]) == pytest.approx(17 / 3 - half, abs=1e-3)
    assert float(rows[0.4]["ci_high"]) == pytest.approx(17 / 3 + half, abs=1e-3)
    assert rows[0.4]["n"] == "3"


def test_aggregate_skips_malformed_files_by_name(hand_made, capsys):
    (hand_made / "elsewhere").mkdir()
    (hand_made / "elsewhere" / "summary.csv").write_text("run,dataset\nx,mnist\n")  # no test_acc column
    with open(hand_made / "summary_b.csv", "w") as f:  # one good row, one truncated
        f.write("run,dataset,loss,rho,seed,test_acc\nb1,cifar10,ce,0.2,0,80.0\nb2,cifar10,ce,0.2,1,8")
        f.write("\nb3,cifar10,ce,0.2\n")
    assert aggregate.main(["--results", str(hand_made), "--no-plot"]) == 0
    err = capsys.readouterr().err
    assert "elsewhere/summary.csv: no column" in err and "summary_b.csv line 4" in err
    cells = table_cells(hand_made / "tables" / "cifar10.csv")
    assert cells[("CE", 0.2)]["n"] == "2"  # b1 and b2 (a short but well-formed number) kept, b3 dropped
    assert (hand_made / "tables" / "mnist.md").exists()


@pytest.mark.slow  # matplotlib: seconds
def test_aggregate_figures(hand_made):
    assert aggregate.main(["--results", str(hand_made)]) == 0
    assert {"mnist_accuracy.png", "mnist_accuracy.pdf"} <= set(os.listdir(hand_made / "figures"))


def test_tau_is_chosen_on_validation_accuracy_never_test(tmp_path):
    rows = []
    for seed in (0, 1):
        for tau, val, test in ((2.0, 60.0, 90.0), (10.0, 70.0, 10.0)):  # test accuracy says the opposite
            rows.append(dict(dataset="mnist", loss="phuber_ce", tau=tau, rho=0.6, seed=seed, val_acc=val + seed,
                             test_acc=test))
        rows.append(dict(dataset="mnist", loss="phuber_ce", tau=2.0, rho=0.2, seed=seed, val_acc=99.0, test_acc=99))
    tau, scores = grid.choose_tau(rows, "mnist", "phuber_ce")
    assert tau == 10.0 and scores == {2.0: 60.5, 10.0: 70.5}
    for r in rows:  # no test column at all: the same choice
        del r["test_acc"]
    assert grid.choose_tau(rows, "mnist", "phuber_ce")[0] == 10.0


# ---------------------------------------------------------------------------------------------
# A real single-node SLURM cluster on localhost (.ci/run installs it; skipped where it is missing).

def squeue_empty(job_ids, env):
    out = subprocess.run(["squeue", "-h", "-j", ",".join(job_ids)], env=env, capture_output=True, text=True)
    return not out.stdout.strip()


@pytest.mark.slow
def test_slurm_array_runs_the_grid_and_aggregates(data_root, tmp_path):
    cluster = tmp_path / "cluster"
    start = subprocess.run(["bash", ".ci/slurm_localhost.sh", "start", str(cluster)], cwd=conftest.ROOT,
                           capture_output=True, text=True, timeout=180)
    if start.returncode == 3:
        pytest.skip(start.stderr.strip())
    assert start.returncode == 0, start.stdout + start.stderr
    env = {"SLURM_CONF": str(cluster / "slurm.conf")}
    try:
        out = tmp_path / "results"
        submitted = run_grid("--slurm", "--quick", "--datasets", "synthetic,mnist", "--losses", "ce,phuber_ce",
                             "--rhos", "0.4", "--out", str(out), "--", "--data-dir", data_root, env=env)
        words = submitted.stdout.split()
        array, aggregation = words[words.index("array") + 1], words[words.index("job", words.index("aggregation")) + 1]
        assert "(4 cells)" in submitted.stdout
        deadline = time.time() + 600
        while not squeue_empty([array, aggregation], dict(os.environ, **env)):
            assert time.time() < deadline, "SLURM jobs did not finish in 10 minutes"
            time.sleep(1)
        logs = sorted(os.listdir(out / "logs"))
        assert sum(name.startswith(f"slurm-{array}_") for name in logs) == 4
        rows = read_csv(out / "summary.csv")
        assert sorted(r["loss"] for r in rows) == ["ce", "phuber_ce"]
        assert (out / "synthetic" / "long_servedio.csv").exists() and (out / "synthetic" / "ding.csv").exists()
        assert (out / "tables" / "mnist.md").exists() and (out / "figures" / "mnist_accuracy.png").exists()
    finally:
        subprocess.run(["bash", ".ci/slurm_localhost.sh", "stop", str(cluster)], cwd=conftest.ROOT, timeout=120)


# ---------------------------------------------------------------------------------------------
# tau: the noisy-validation protocol and the sweep.

@pytest.mark.slow
def test_tune_tau_protocol_end_to_end(data_root, tmp_path):
    common = ["--tune-tau", "--quick", "--datasets", "mnist", "--rhos", "0,0.4", "--tau-candidates", "2,10",
              "--out", str(tmp_path)]
    cells = [line.split()[1] for line in run_grid(*common, "--losses", "ce,phuber_ce", "--list").stdout.splitlines()]
    assert cells[:2] == ["tau-tuning-mnist-phuber_ce-tau2-rho0.4-seed0", "tau-tuning-mnist-phuber_ce-tau10-rho0.4-seed0"]
    assert "mnist-phuber_ce-tuned-rho0-seed0" in cells and len(cells) == 2 + 2 * 2  # CE: not tuned, in the grid
    result = run_grid(*common, "--losses", "phuber_ce", "--", "--data-dir", data_root)  # the loss with a tau only
    assert "4 ran" in result.stdout and "0 failed" in result.stdout
    tuning = read_csv(tmp_path / "tuning" / "summary.csv")
    assert sorted(float(r["tau"]) for r in tuning) == [2.0, 10.0]
    assert all(r["val_size"] == "30" and r["rho"] == "0.4" for r in tuning)  # 10% of 300 held out, highest rho
    best = max(tuning, key=lambda r: (float(r["val_acc"]), -float(r["tau"])))["tau"]
    grid = [r for r in read_csv(tmp_path / "summary.csv") if r["loss"] == "phuber_ce"]
    assert {r["tau"] for r in grid} == {best} and len(grid) == 2 and all(r["val_size"] == "0" for r in grid)
    selection = (tmp_path / "tables" / "tau_selection.md").read_text()
    assert f"| mnist | PHuber-CE | {float(best):g} |" in selection
    assert "†" in (tmp_path / "tables" / "mnist.md").read_text()


@pytest.mark.slow  # matplotlib: seconds
def test_tau_sweep_figure(tmp_path):
    rows = [summary_row("cifar100", "phuber_ce", rho, seed, 50 + tau / 10 - 10 * rho, tau=float(tau))
            for tau in (2, 10, 50) for rho in (0.2, 0.6) for seed in (0, 1)]
    conftest.write_csv_rows(tmp_path / "summary.csv", rows)
    listing = run_grid("--list", "--datasets", "cifar100", "--losses", "phuber_ce", "--taus", "2,10,50").stdout
    assert len(listing.splitlines()) == 3 * 4 * 3 and "tau50" in listing and "tau2-" in listing
    assert aggregate.main(["--results", str(tmp_path)]) == 0
    assert (tmp_path / "figures" / "cifar100_tau_sweep.png").exists()


# ---------------------------------------------------------------------------------------------
# The report's Table 3 (label noise seeds), sources of published numbers, rows as in the report.

def test_table3_cells_and_their_runs():
    listing = [line.split()[1] for line in run_grid("--table3", "--list").stdout.splitlines()]
    assert len(listing) == 2 * 2 * 4 * 3  # datasets x losses x noise seeds x trials, all at rho 0.6
    assert listing[:4] == ["mnist-ce-rho0.6-seed0", "mnist-ce-rho0.6-seed1", "mnist-ce-rho0.6-seed2",
                           "mnist-ce-rho0.6-seed0-ns1"]
    assert "cifar100-phuber_gce-tau10-rho0.6-seed2-ns3" in listing
    main_grid = {c.id: c for c in grid.cells()}
    table3 = {c.id: c for c in grid.cells(**grid.TABLE3)}
    shared = [i for i in table3 if i in main_grid]
    assert len(shared) == 12 and all(i.endswith(("seed0", "seed1", "seed2")) for i in shared)
    for i in shared:  # noise seed 0: the same command, so the same run (reused, never run twice)
        assert table3[i].argv == main_grid[i].argv
    names = {results.run_name(config.parse(c.script, list(c.argv)).settings()) for c in table3.values()}
    assert len(names) == 48  # every other cell is a run of its own
    dry = run_grid("--table3", "--task", "3", "--dry-run").stdout
    assert "--noise-seed 1 --seed 0" in dry and "--rho 0.6" in dry


@pytest.fixture
def noise_seed_results(tmp_path):
    rows = []
    for dataset, loss, tau, base in (("mnist", "ce", "", 90.0), ("mnist", "phuber_gce", 10.0, 89.0),
                                     ("cifar100", "ce", "", 27.0)):
        for noise_seed in (0, 1, 2, 3):
            for seed in (0, 1, 2):
                if dataset == "cifar100" and (noise_seed == 3 or (noise_seed == 2 and seed == 2)):
                    continue  # a missing cell and one with two trials
                own = dict(model="resnet50", epochs=200) if dataset == "cifar100" else {}  # never named in a label
                rows.append(summary_row(dataset, loss, 0.6, seed, base + noise_seed + seed / 10, tau=tau,
                                        q=0.7 if loss == "phuber_gce" else "", noise_seed=noise_seed,
                                        run=f"{dataset}-{loss}-{noise_seed}-{seed}", **own))
    conftest.write_csv_rows(tmp_path / "summary.csv", rows)
    return tmp_path


def test_noise_seed_table_layout_and_numbers(noise_seed_results):
    assert aggregate.main(["--results", str(noise_seed_results), "--no-plot"]) == 0
    md = (noise_seed_results / "tables" / "noise_seeds.md").read_text().splitlines()
    assert md[2] == "| Label noise | Dataset | Loss | Seed 0 | Seed 1 | Seed 2 | Seed 3 | Original paper |"
    # trials at base + noise seed + seed/10: mean base + noise seed + 0.1, s.e. 0.1 / sqrt(3) = 0.06
    assert md[4] == "| ρ = 0.6 | mnist | CE | 90.1 ± 0.1 | 91.1 ± 0.1 | 92.1 ± 0.1 | 93.1 ± 0.1 | 91.1 ± 0.6 |"
    assert md[5] == ("| ρ = 0.6 | mnist | PHuber-GCE τ = 10 | 89.1 ± 0.1 | 90.1 ± 0.1 | 91.1 ± 0.1 | 92.1 ± 0.1 "
                     "| 97.8 ± 0.0 |")
    assert md[6] == "| ρ = 0.6 | cifar100 | CE | 27.1 ± 0.1 | 28.1 ± 0.1 | 29.1 ± 0.1 (n=2) | - | 11.4 ± 0.2 |"
    assert (noise_seed_results / "tables" / "noise_seeds.tex").exists()
    cells = {(r["dataset"], r["loss"], r["noise_seed"]): r for r in read_csv(noise_seed_results / "tables" /
                                                                              "noise_seeds.csv")}
    assert float(cells[("mnist", "CE", "2")]["mean"]) == pytest.approx(92.1)
    assert cells[("cifar100", "CE", "3")]["n"] == "0" and cells[("mnist", "CE", "original paper")]["se"] == "0.6"
    # the report's Table 1 is noise seed 0's: three trials per cell, the other seeds pointed to
    mnist = (noise_seed_results / "tables" / "mnist.md").read_text()
    assert "| CE | **90.1 ± 0.1** |" in mnist and "18 runs with other label-noise seeds" in mnist


def test_published_numbers_are_labelled_with_their_source(tmp_path):
    rows = [summary_row(d, "phuber_ce", 0.6, s, 70.0, tau=t) for d, t in (("cifar10", 2.0), ("mnist", 10.0))
            for s in (0, 1, 2)]
    rows += [summary_row("mnist", "ce", 0.6, s, 98.0) for s in (0, 1, 2)]
    conftest.write_csv_rows(tmp_path / "summary.csv", rows)
    assert aggregate.main(["--results", str(tmp_path), "--no-plot"]) == 0
    cifar10 = (tmp_path / "tables" / "cifar10_comparison.md").read_text()
    header = cifar10.splitlines()[2]
    assert "report authors' code README (not in the report)" in header and "| report Table" not in cifar10
    assert "| PHuber-CE τ = 2 | 0.6 | 70.0 ± 0.0 | 73.2 ± 0.2 | 72.2 |" in cifar10  # original: no s.e. published
    mnist = (tmp_path / "tables" / "mnist_comparison.md").read_text()
    assert "| report Table 1 |" in mnist.splitlines()[2]
    assert "| CE | 0.6 | 98.0 ± 0.0 | 98.0 ± 0.1 | 91.1 ± 0.6 |" in mnist  # the original's s.e. (report Table 3)
    assert "original paper: report Figure 2; report Table 3 (mean and s.e.)" in mnist
    table = read_csv(tmp_path / "tables" / "cifar10_comparison.csv")[0]
    assert table["reproduction_where"] == "report authors' code README (not in the report)"


def test_tables_have_the_reports_rows_labels_and_order(tmp_path):
    settings = [("phuber_ce", dict(tau=50.0)), ("phuber_gce", dict(tau=10.0, q=0.7)), ("phuber_ce", dict(tau=10.0)),
                ("gce", dict(q=0.7)), ("linear", {}), ("ce", dict(clip_norm=0.1)), ("ce", {}), ("gce", dict(q=0.4))]
    rows = [summary_row("cifar100", loss, 0.2, s, 50.0, **extra) for loss, extra in settings for s in (0, 1, 2)]
    conftest.write_csv_rows(tmp_path / "summary.csv", rows)
    assert aggregate.main(["--results", str(tmp_path), "--no-plot"]) == 0
    labels = [line.split(" | ")[0][2:] for line in (tmp_path / "tables" / "cifar100.md").read_text().splitlines()[4:]]
    assert labels == ["CE", "CE + clipping", "Linear", "GCE", "PHuber-CE τ = 10", "PHuber-GCE τ = 10",
                      "PHuber-CE τ = 50", "GCE q = 0.4"]  # the report's Table 2, then what it does not have


FAKE_SBATCH = """#!/usr/bin/env bash
# records each call's arguments, one per line, then a blank line; answers with a job id
printf '%s\\n' "$@" >> "$SBATCH_LOG"; echo >> "$SBATCH_LOG"
echo $(( $(grep -c '^$' "$SBATCH_LOG") + 100 ))
"""


def test_slurm_submission_of_table3_with_awkward_paths(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH)
    (bin_dir / "sbatch").chmod(0o755)
    caller = tmp_path / "my project"  # the caller's directory, with a space
    caller.mkdir()
    log = tmp_path / "sbatch.log"
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SBATCH_LOG": str(log)}
    out = run_grid("--slurm", "--table3", "--datasets", "mnist", "--out", "res ults", "--sbatch", "--partition=gpu",
                   "--", "--data-dir", "my data", env=env, cwd=caller).stdout
    assert "submitted job array 101 (24 cells) and aggregation job 102" in out
    grid_call, aggregation = [call.splitlines() for call in log.read_text().strip("\n").split("\n\n")]
    assert "--array=0-23" in grid_call and "--partition=gpu" in grid_call and f"--chdir={caller}" in grid_call
    assert "--dependency=afterany:101" in aggregation
    worker = grid_call[grid_call.index("--wrap") + 1]
    argv = shlex.split(worker.replace("$SLURM_ARRAY_TASK_ID", "5"))
    # a task runs run_all.sh again with the arguments as given (relative to --chdir) and --task
    assert argv[:2] == ["bash", os.path.join(conftest.ROOT, "run_all.sh")] and "--table3" in argv
    assert argv[argv.index("--out") + 1] == "res ults" and argv[argv.index("--task") + 1] == "5"
    argv.insert(argv.index("--"), "--dry-run")  # what task 5 runs, without running it
    command = shlex.split(run_grid(*argv[2:], cwd=caller).stdout)  # a task ignores --slurm: it runs its cell
    assert command[command.index("--noise-seed") + 1] == "1" and command[command.index("--seed") + 1] == "2"
    assert command[command.index("--out") + 1] == str(caller / "res ults")
    assert command[command.index("--data-dir") + 1] == "my data"  # relative to --chdir, the caller's directory
