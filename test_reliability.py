"""Reliability (issue 12): the grid runner never reports success it did not have, signals stop
everything, paths are the caller's, one process per run, a resumed run is the same run, and every
bad input, from flags or from files, gets one line."""
import datetime
import errno
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import aggregate
import conftest
import grid
import results
import synthetic_ding
import synthetic_long_servedio
import train_cifar
import train_mnist
from conftest import only_run_dir, run_all, write_csv_rows
from results import read_csv

QUICK_MNIST = ["--quick", "--datasets", "mnist", "--losses", "ce", "--rhos", "0"]


def live(pid):
    """Whether process `pid` still runs (a zombie has ended: it only waits to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def processes_mentioning(text):
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read() and live(pid) and int(pid) != os.getpid():
                    found.append(int(pid))
        except OSError:
            pass
    return found


def wait_for(condition, seconds=120, proc=None):
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, "timed out"
        assert proc is None or proc.poll() is None, "the process ended early"
        time.sleep(0.02)


# ---------------------------------------------------------------------------------------------
# 1. run_all.sh: only missing data is "skipped"; every other failure fails, non-zero.

@pytest.mark.parametrize("extra,message", [
    (["--ampp", "bf16"], "unrecognized arguments: --ampp"),
    (["--amp", "bf17"], "invalid choice: 'bf17'"),
    (["--lr", "nan"], "--lr nan is not allowed"),
    (["--loss", "huber"], "'huber' is not allowed"),
    (["--out", "elsewhere"], "--out is not allowed after --"),
    (["--q", "0.5"], "loss 'phuber_ce' does not take q"),  # GCE takes it: only the grid's later cells reject it
])
@pytest.mark.parametrize("task", [[], ["--task", "5"]])
def test_a_rejected_pass_through_flag_stops_the_grid_before_any_cell(extra, message, task, tmp_path, data_root):
    selection = ["--quick", "--datasets", "mnist", "--losses", "gce,phuber_ce", "--rhos", "0,0.2,0.4"]
    result = run_all(*selection, *task, "--out", str(tmp_path / "out"), "--", "--data-dir", data_root, *extra,
                     check=False)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "cell 1/" not in result.stdout and not (tmp_path / "out").exists()  # nothing written


@pytest.mark.slow
def test_a_python_without_torch_fails_instead_of_skipping(tmp_path, data_root):
    bare = os.path.join(sys.base_prefix, "bin", "python3")  # the interpreter this environment was made from
    if subprocess.run([bare, "-c", "import torch"], capture_output=True).returncode == 0:
        pytest.skip(f"{bare} has torch")
    result = run_all(*QUICK_MNIST, "--out", str(tmp_path), "--", "--data-dir", data_root, check=False,
                     env={"PYTHON": bare})
    assert result.returncode == 1 and "skipped" not in result.stdout
    assert "mnist: the training script cannot start (exit 1): ModuleNotFoundError: No module named 'torch'" in result.stderr


@pytest.mark.parametrize("args,message", [
    (["--rhos", "0.2,0.2"], "--rhos '0.2,0.2' repeats a value"), (["--datasets", "mnist,mnist"], "repeats a value"),
    (["--losses", "ce,ce"], "repeats a value"), (["--tune-tau", "--tau-candidates", "2,2"], "repeats a value"),
    (["--slurm", "--sbatch", "--comment='a"], "No closing quotation"),
    (["--table3", "--memorisation"], "choose one"),
])
def test_bad_selections_are_one_line_and_write_nothing(args, message, tmp_path):
    result = run_all("--datasets", "mnist", *args, "--out", str(tmp_path / "out"), check=False)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_values_pass_through_exactly():
    out = run_all("--dry-run", "--datasets", "mnist", "--losses", "phuber_ce", "--taus", "1.0000001,2",
                  "--rhos", "0.123456789", "--trials", "1").stdout.splitlines()
    assert ["--tau 1.0000001" in line for line in out] == [True, False]
    assert all("--rho 0.123456789 " in line for line in out) and "--tau 2 " in out[1]


def test_tau_is_chosen_among_the_candidates_only():
    rows = [dict(dataset="mnist", loss="phuber_ce", tau=tau, rho=0.6, seed=0, val_acc=acc)
            for tau, acc in ((2.0, 30.0), (10.0, 31.0), (50.0, 99.0))]  # tau 50: another tuning's run
    assert grid.choose_tau(rows, "mnist", "phuber_ce", [2.0, 10.0])[0] == 10.0
    assert grid.choose_tau(rows, "mnist", "phuber_ce")[0] == 50.0
    assert grid.choose_tau(rows[:1], "mnist", "phuber_ce", [2.0, 10.0])[0] is None  # not every candidate ran


def test_no_python_is_one_line(tmp_path):
    result = run_all("--list", check=False, env={"PYTHON": str(tmp_path / "no-python")})
    assert result.returncode == 2 and "is not a command" in result.stderr and len(result.stderr.splitlines()) == 1


@pytest.mark.slow
def test_failing_cells_and_a_failing_aggregation_fail_the_grid(tmp_path, data_root):
    # every cell diverges: each is "failed" with the last line of its log, and the exit status is 1
    result = run_all("--quick", "--datasets", "mnist", "--losses", "ce,linear", "--rhos", "0", "--out", str(tmp_path / "a"),
                     "--", "--data-dir", data_root, "--lr", "1e30", check=False)
    assert result.returncode == 1 and "0 ran, 0 already finished, 0 skipped (data unavailable), 2 failed" in result.stdout
    assert result.stdout.count("non-finite training loss at epoch 1") == 4  # as it happens and in the summary
    # the cells run, but aggregate.py cannot write its tables: that is a failure too
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "tables").write_text("a file where the tables folder goes")
    result = run_all(*QUICK_MNIST, "--out", str(tmp_path / "b"), "--", "--data-dir", data_root, check=False)
    assert "1 ran" in result.stdout and "aggregate.py FAILED" in result.stdout and result.returncode == 1


@pytest.mark.slow
def test_missing_data_is_skipped_naming_the_files_and_where(tmp_path):
    empty = conftest.unreachable_folder(tmp_path)
    result = run_all("--quick", "--datasets", "mnist,cifar10", "--losses", "ce", "--rhos", "0", "--out", str(tmp_path),
                     "--", "--data-dir", str(empty), timeout=300)
    assert result.returncode == 0 and "0 ran, 0 already finished, 2 skipped (data unavailable), 0 failed" in result.stdout
    mnist, cifar = (line for line in result.stdout.splitlines() if line.startswith("skipping"))
    assert "train-images-idx3-ubyte" in mnist and str(empty) in mnist
    assert "data_batch_1" in cifar and os.path.join(str(empty), "cifar-10-batches-py") in cifar


# ---------------------------------------------------------------------------------------------
# 2. Ctrl-C and SIGTERM stop the whole grid; --gpus is checked; pools die with their parent.

def cuda_visible_devices(pid):
    with open(f"/proc/{pid}/environ", "rb") as f:
        return dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v).get(b"CUDA_VISIBLE_DEVICES", b"").decode()


@pytest.mark.slow
@pytest.mark.parametrize("signum,status,workers", [
    (signal.SIGTERM, 143, ["--gpus", "0,1"]), (signal.SIGINT, 130, ["--gpus", "0,1"]),
    (signal.SIGTERM, 143, ["--gpus", "0", "--per-gpu", "2"]),  # two cells on one GPU at the same time
], ids=["sigterm-two-gpus", "sigint-two-gpus", "sigterm-per-gpu-2"])
def test_a_signal_stops_every_worker_and_cell_and_the_grid_resumes(signum, status, workers, tmp_path, data_root):
    out = tmp_path / "out"
    grid = [*workers, "--quick", "--datasets", "mnist", "--losses", "ce,linear", "--rhos", "0", "--out", str(out)]
    cells = lambda epochs: ["--", "--data-dir", data_root, "--device", "cpu", "--epochs", epochs, "--limit-train", "64"]  # noqa
    gpus = {"CUDA_VISIBLE_DEVICES": "0,1"}  # two "GPUs" on a CPU machine; --device cpu runs the cells there
    runner = subprocess.Popen(["bash", "run_all.sh", *grid, *cells("200")], cwd=conftest.ROOT,
                              env=dict(os.environ, PYTHON=sys.executable, **gpus), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    runs = out / "runs"
    wait_for(lambda: runs.is_dir() and sum((d / "checkpoint.pt").exists() for d in runs.iterdir()) == 2, proc=runner)
    running = processes_mentioning(str(out))
    assert len(running) == 3 and runner.pid in running  # the runner and one cell per worker, at the same time ...
    cells_now = sorted(set(running) - {runner.pid})
    assert sorted(int(results.lock_holder(str(d))) for d in runs.iterdir()) == cells_now  # ... each holding its run
    assert sorted(map(cuda_visible_devices, cells_now)) == (["0", "1"] if "0,1" in workers else ["0", "0"])
    runner.send_signal(signum)  # to the runner alone, as SLURM or a parent process would
    assert runner.wait(timeout=60) == status and "interrupted" in runner.stdout.read()
    wait_for(lambda: not processes_mentioning(str(out)), seconds=30)  # no worker, no cell left
    assert not (out / "summary.csv").exists()
    again = run_all(*grid, *cells("2"), check=False, env=gpus)
    assert again.returncode == 1 and "2 failed" in again.stdout  # other --epochs: resuming would mix two runs, ...
    assert "differs in epochs (200 there, 2 here)" in again.stdout  # ... so it says so, for each cell
    again = run_all(*grid, *cells("200"), env=gpus, timeout=600)  # ... the same command resumes
    assert "2 ran" in again.stdout and len(read_csv(out / "summary.csv")) == 2
    assert all("resuming after epoch" in open(p).read() for p in (out / "logs").iterdir())


@pytest.mark.parametrize("gpus,visible,message", [
    ("a", "0,1", "distinct integer GPU ids"), ("0,0", "0,1", "distinct integer GPU ids"), ("-1", "0,1", "distinct"),
    ("2", "0,1", "2 GPU(s) visible here (ids 0-1)"), ("0", "", "0 GPU(s) visible here"),
])
def test_bad_gpus_are_one_line(gpus, visible, message):
    result = run_all("--gpus", gpus, "--datasets", "mnist", check=False, env={"CUDA_VISIBLE_DEVICES": visible})
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args,message", [
    (["--per-gpu", "2"], "--per-gpu '2' is not allowed without --gpus"),
    (["--per-gpu", "2", "--cpu-workers", "2"], "without --gpus"),
    (["--gpus", "0", "--per-gpu", "2", "--slurm"], "with --slurm"),
    (["--gpus", "0", "--per-gpu", "0"], "--per-gpu '0' is not allowed: 1 to"),
    (["--gpus", "0", "--per-gpu", "two"], "'two' is not allowed: 1 to"),
    (["--gpus", "0,1", "--per-gpu", str(os.cpu_count())], "a core per cell"),
])
def test_bad_per_gpu_is_one_line(args, message, tmp_path):
    result = run_all(*args, "--datasets", "mnist", "--out", str(tmp_path / "out"), check=False,
                     env={"CUDA_VISIBLE_DEVICES": "0,1"})
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_synthetic_pool_workers_die_with_their_parent(tmp_path):
    proc = subprocess.Popen([sys.executable, "synthetic_long_servedio.py", "--trials", "100000", "--workers", "2",
                             "--no-plot", "--out", str(tmp_path)], cwd=conftest.ROOT)

    def workers():
        try:
            return [int(p) for task in os.listdir(f"/proc/{proc.pid}/task")
                    for p in open(f"/proc/{proc.pid}/task/{task}/children").read().split()]
        except OSError:
            return []
    wait_for(lambda: len(workers()) == 2, seconds=60, proc=proc)
    pool = workers()
    proc.kill()  # SIGKILL: the main process cannot clean up
    proc.wait()
    wait_for(lambda: not any(live(p) for p in pool), seconds=10)


# ---------------------------------------------------------------------------------------------
# 3. Paths: the caller's, with spaces.

@pytest.mark.slow
def test_paths_with_spaces_relative_to_the_caller(tmp_path, data_root):
    caller = tmp_path / "my work"
    (caller / "my data").mkdir(parents=True)
    shutil.copytree(data_root, caller / "my data" / "set", dirs_exist_ok=True)
    result = run_all(*QUICK_MNIST, "--out", "my results", "--", "--data-dir", "my data/set", cwd=caller)
    assert "1 ran" in result.stdout and len(read_csv(caller / "my results" / "summary.csv")) == 1
    assert (caller / "my results" / "tables" / "mnist.md").exists() and not (tmp_path / "my results").exists()


# ---------------------------------------------------------------------------------------------
# 4. One process per run folder.

@pytest.mark.slow
def test_one_process_per_run_and_a_stale_lock_is_taken_over(mnist_dir, tmp_path):
    argv = [sys.executable, "train_mnist.py", "--data-dir", mnist_dir, "--out", str(tmp_path), "--epochs", "300"]
    first = subprocess.Popen(argv, cwd=conftest.ROOT, stdout=subprocess.DEVNULL)
    wait_for(lambda: (tmp_path / "runs").is_dir() and any((d / "checkpoint.pt").exists()
                                                           for d in (tmp_path / "runs").iterdir()), proc=first)
    for extra in ([], ["--resume"], ["--force"]):  # the same run twice, in any mode: one line, exit 2
        second = subprocess.run(argv + extra, cwd=conftest.ROOT, capture_output=True, text=True)
        assert second.returncode == 2 and f"is in progress (pid {first.pid})" in second.stderr, second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
    first.kill()  # its lock goes with it: the next start takes it over and resumes
    first.wait()
    resumed = subprocess.run(argv[:-1] + ["3", "--resume"], cwd=conftest.ROOT, capture_output=True, text=True)
    assert resumed.returncode == 2 and "differs in epochs (300 there, 3 here)" in resumed.stderr
    resumed = subprocess.run(argv[:-1] + ["300", "--resume"], cwd=conftest.ROOT, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0 and "resuming after epoch" in resumed.stdout
    assert len(read_csv(tmp_path / "summary.csv")) == 1


# ---------------------------------------------------------------------------------------------
# 5. A resumed run is the same run.

def interrupted(mnist_dir, out, monkeypatch, *extra):
    """An interrupted run of 3 epochs (its checkpoint is epoch 3): Ctrl-C just before it finishes."""
    def ctrl_c(*args):
        raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setattr("experiment.finish", ctrl_c)
        with pytest.raises(SystemExit) as e:
            train_mnist.main(["--data-dir", mnist_dir, "--out", str(out), "--epochs", "3", *extra])
    assert e.value.code == 130
    return only_run_dir(out)


def test_interrupt_is_one_line_and_leaves_a_checkpoint(mnist_dir, tmp_path, monkeypatch, capsys):
    run_dir = interrupted(mnist_dir, tmp_path, monkeypatch)
    assert "interrupted; its last checkpoint is epoch 3: rerun with --resume" in capsys.readouterr().err
    assert os.path.exists(os.path.join(run_dir, "checkpoint.pt"))


def test_resume_refuses_other_data(mnist_dir, tmp_path, monkeypatch, capsys):
    interrupted(mnist_dir, tmp_path, monkeypatch)
    other = conftest.make_idx_dataset(str(tmp_path / "other"), seed=1)  # same sizes, other images and labels
    with pytest.raises(SystemExit) as e:
        train_mnist.main(["--data-dir", other, "--out", str(tmp_path), "--epochs", "3", "--resume"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "was made on other data (clean_labels, images, noisy_labels, test_labels differ)" in err
    assert not (tmp_path / "summary.csv").exists()


@pytest.mark.parametrize("changed,difference", [(["--lr", "0.002"], "lr (0.001 there, 0.002 here)"),
                                                (["--epochs", "5"], "epochs (3 there, 5 here)")])
def test_resume_with_changed_settings_names_the_interrupted_run(changed, difference, mnist_dir, tmp_path, monkeypatch,
                                                                capsys):
    run_dir = interrupted(mnist_dir, tmp_path, monkeypatch)
    argv = ["--data-dir", mnist_dir, "--out", str(tmp_path), "--epochs", "3", *changed]
    with pytest.raises(SystemExit) as e:
        train_mnist.main(argv + ["--resume"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"the interrupted run {os.path.basename(run_dir)} differs in {difference}" in err
    assert train_mnist.main(argv + ["--resume", "--force"]) == 0  # --force starts the other run


def test_leftover_temporary_files_go_at_the_next_start(mnist_dir, tmp_path, monkeypatch):
    run_dir = interrupted(mnist_dir, tmp_path, monkeypatch)
    for name in (".checkpoint.pt4x8k2m.tmp", ".epochs.csvq7.tmp"):  # a kill during an atomic write
        open(os.path.join(run_dir, name), "wb").write(b"\0" * 1000)
    open(tmp_path / ".summary.csvz3.tmp", "w").write("half a row")
    assert train_mnist.main(["--data-dir", mnist_dir, "--out", str(tmp_path), "--epochs", "3", "--resume"]) == 0
    assert not list(tmp_path.rglob(conftest.TEMPORARY))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "foreign"])
def test_a_corrupt_checkpoint_is_one_line(damage, mnist_dir, tmp_path, monkeypatch, capsys):
    checkpoint = os.path.join(interrupted(mnist_dir, tmp_path, monkeypatch), "checkpoint.pt")
    data = open(checkpoint, "rb").read()
    payloads = {"truncate": data[:len(data) // 2], "garbage": os.urandom(5000), "empty": b"",
                "foreign": pickle.dumps({"model": datetime.datetime(2026, 1, 1)})}  # not tensors and plain values
    open(checkpoint, "wb").write(payloads[damage])
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        train_mnist.main(["--data-dir", mnist_dir, "--out", str(tmp_path), "--epochs", "3", "--resume"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "is not a readable checkpoint" in err and len(err.splitlines()) == 1


# ---------------------------------------------------------------------------------------------
# 6. aggregate.py treats its input as untrusted.

def good_row(**changes):
    row = dict(run="r", dataset="mnist", model="lenet", loss="ce", tau="", q="", clip_norm="", rho="0.2", seed="0",
               noise_seed="0", epochs="20", test_acc="90.0")
    return {**row, **changes}


BAD_ROWS = [  # (changes, what the warning must name)
    (dict(test_acc="nan"), "test_acc 'nan'"), (dict(test_acc="inf"), "test_acc 'inf'"),
    (dict(test_acc="-inf"), "test_acc '-inf'"), (dict(test_acc="140"), "test_acc '140'"),
    (dict(test_acc="ninety"), "test_acc 'ninety' is not a number"), (dict(seed="1.5"), "seed '1.5'"),
    (dict(seed="x"), "seed 'x'"), (dict(seed="-1"), "seed '-1'"), (dict(noise_seed="0.5"), "noise_seed '0.5'"),
    (dict(loss="phuber_ce", tau="0.5"), "tau=0.5 is not allowed"), (dict(loss="phuber_ce", tau="abc"), "tau 'abc'"),
    (dict(loss="phuber_ce", tau="nan"), "tau 'nan'"), (dict(loss="gce", q="2"), "q=2.0 is not allowed"),
    (dict(clip_norm="-1"), "clip_norm '-1'"), (dict(loss="sce", beta="inf"), "beta 'inf'"),
    (dict(rho="1.5"), "rho '1.5'"), (dict(dataset="../../x"), "dataset '../../x'"), (dict(dataset="/etc"), "'/etc'"),
    (dict(dataset=".hidden"), "'.hidden'"),
]


def test_bad_rows_are_named_and_skipped(tmp_path, capsys):
    rows = [good_row(run=f"bad{i}", **changes) for i, (changes, _) in enumerate(BAD_ROWS)]
    rows += [good_row(run=f"good{seed}", seed=str(seed), test_acc=str(90 + seed)) for seed in (0, 1, 2)]
    write_csv_rows(tmp_path / "results" / "summary.csv", [{**r, "beta": r.get("beta", "")} for r in rows])
    assert aggregate.main(["--results", str(tmp_path / "results"), "--no-plot"]) == 0
    err = capsys.readouterr().err
    for line, (_, named) in enumerate(BAD_ROWS, start=2):
        assert f"summary.csv line {line}: " in err and named in err, named
    (cell,) = read_csv(tmp_path / "results" / "tables" / "mnist.csv")
    assert cell["n"] == "3" and float(cell["mean"]) == 91.0 and cell["best"] == "True"  # inf is not "best"
    written = {p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()}
    assert all(str(p).startswith("results") for p in written)  # nothing outside the results folder


def test_formula_cells_are_neutralised(tmp_path):
    rows = [good_row(run=f"r{s}", seed=str(s), loss="=HYPERLINK(\"http://x\",\"y\")") for s in (0, 1, 2)]
    rows += [good_row(run=f"s{s}", seed=str(s), loss="@SUM(A1)", test_acc="80") for s in (0, 1, 2)]
    write_csv_rows(tmp_path / "summary.csv", rows)
    assert aggregate.main(["--results", str(tmp_path), "--no-plot"]) == 0
    for name in ("mnist.csv", "mnist.md", "mnist.tex"):
        text = (tmp_path / "tables" / name).read_text()
        assert "'=HYPERLINK" in text and "'@SUM" in text, name
        assert not any(cell.strip().startswith(("=", "@")) for line in text.splitlines()
                       for cell in line.replace("|", ",").replace("&", ",").split(",")), name
    assert "| - |" not in (tmp_path / "tables" / "mnist.md").read_text() or True  # a missing cell stays "-"


@pytest.mark.parametrize("argv,message", [
    (["--out", "FILE"], "is a file"), (["--candidates", "abc", "--choose-tau"], "--candidates 'abc'"),
    (["--trials", "0"], "--trials 0"), (["--results", "NOWHERE"], "is not a folder"),
])
def test_aggregate_bad_command_lines_are_one_line(argv, message, tmp_path, capsys):
    write_csv_rows(tmp_path / "summary.csv", [good_row()])
    (tmp_path / "file").write_text("")
    argv = [str(tmp_path / "file") if a == "FILE" else str(tmp_path / "nowhere") if a == "NOWHERE" else a for a in argv]
    with pytest.raises(SystemExit) as e:
        aggregate.main(["--results", str(tmp_path), *argv] if "--results" not in argv else argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and message in err and len(err.splitlines()) == 1


@pytest.fixture
def read_only(tmp_path):
    """A read-only folder: a read-only bind mount (root writes through a mode-only read-only folder)."""
    folder, source = tmp_path / "read-only", tmp_path / "source"
    folder.mkdir()
    source.mkdir()
    write_csv_rows(source / "summary.csv", [good_row(run=f"r{s}", seed=str(s)) for s in (0, 1, 2)])
    mounted = subprocess.run(["mount", "--bind", str(source), str(folder)], capture_output=True).returncode == 0 and \
        subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], capture_output=True).returncode == 0
    if not mounted:
        subprocess.run(["umount", str(folder)], capture_output=True)
        pytest.skip("cannot make a read-only bind mount here (not root)")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_read_only_results_folders_are_one_line(read_only, mnist_dir, capsys):
    with pytest.raises(SystemExit) as e:
        aggregate.main(["--results", str(read_only), "--no-plot"])
    assert e.value.code == 2 and "is not writable (Read-only file system)" in capsys.readouterr().err
    for script, argv in ((train_mnist, ["--data-dir", mnist_dir]), (synthetic_ding, []),
                         (synthetic_long_servedio, ["--trials", "1"])):
        with pytest.raises(SystemExit) as e:
            script.main(["--out", str(read_only / "out"), *argv])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and "Read-only file system" in err and len(err.splitlines()) == 1, script


# ---------------------------------------------------------------------------------------------
# 7. One line, not a traceback, for every bad input, before the expensive work.

@pytest.mark.parametrize("flags,message", [
    (["--lr", "nan"], "--lr nan"), (["--lr", "inf"], "--lr inf"), (["--weight-decay", "nan"], "--weight-decay nan"),
    (["--weight-decay", "-1"], "--weight-decay -1.0"), (["--noise-seed", "-1"], "--noise-seed -1"),
    (["--seed", str(2 ** 63)], f"--seed {2 ** 63}"), (["--seed", "-5"], "--seed -5"),
    (["--clip-norm", "nan"], "--clip-norm nan"), (["--lr-decay-steps", "inf"], "--lr-decay-steps inf"),
    (["--device", "cuda"], "--device 'cuda' is not allowed: this machine has 0 visible CUDA device(s)"),
    (["--device", "cuda:7"], "--device 'cuda:7'"), (["--device", "meta"], "--device 'meta' is not allowed: use cpu"),
    (["--device", "mps"], "--device 'mps'"),
])
def test_bad_flags_are_one_line_and_write_nothing(flags, message, tmp_path, capsys):
    if flags[0] == "--device" and "cuda" in flags[1] and __import__("torch").cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit) as e:  # no data folder at all: the flags are checked before the data
        train_mnist.main(["--data-dir", str(tmp_path / "no data"), "--out", str(tmp_path / "out"), *flags])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("place", ["a file", "summary folder"])
def test_an_unwritable_out_is_refused_before_the_data_and_the_trials(place, tmp_path, capsys):
    out = tmp_path / "out"
    if place == "a file":
        out.write_text("")
    else:
        (out / "summary.csv").mkdir(parents=True)
    for script, argv in ((train_mnist, ["--data-dir", str(tmp_path / "no data")]),
                         (synthetic_long_servedio, ["--trials", "100000"]), (synthetic_ding, ["--seeds", "1000"])):
        with pytest.raises(SystemExit) as e:
            script.main(["--out", str(out), *argv])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and "cannot hold results" in err and len(err.splitlines()) == 1, (script, err)


def test_val_split_leaving_no_training_sample(mnist_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        train_mnist.main(["--data-dir", mnist_dir, "--out", str(tmp_path), "--val-split", "0.9999"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--val-split 0.9999 holds out all 600 training samples" in err


def idx_variants(folder):
    """Broken copies of a good IDX dataset: {case: (file to break, its new bytes)}."""
    images, labels = (open(os.path.join(folder, f"train-{k}"), "rb").read()
                      for k in ("images-idx3-ubyte", "labels-idx1-ubyte"))
    shape = lambda data, dims: b"\0\0\x08" + bytes([len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims) + data  # noqa
    return {
        "header cut": ("train-images-idx3-ubyte", images[:9]),
        "data cut": ("train-images-idx3-ubyte", images[:5000]),
        "bad magic": ("train-images-idx3-ubyte", b"\x1f\x8b" + images[2:]),
        "wrong size": ("train-images-idx3-ubyte", shape(bytes(600 * 32 * 32), (600, 32, 32))),
        "labels in images": ("train-images-idx3-ubyte", labels),
        "label 10": ("train-labels-idx1-ubyte", labels[:-1] + bytes([10])),
        "label 255": ("train-labels-idx1-ubyte", labels[:8] + bytes([255]) + labels[9:]),
        "fewer labels": ("train-labels-idx1-ubyte", shape(labels[8:-5], (595,))),
    }


@pytest.mark.parametrize("case", list(idx_variants(conftest.make_idx_dataset(os.path.join(
    os.environ.get("TMPDIR", "/tmp"), f"idx-variants-{os.getpid()}")))))
def test_a_broken_idx_file_is_named_alone(case, tmp_path, capsys):
    folder = conftest.make_idx_dataset(str(tmp_path / "data"))
    name, content = idx_variants(folder)[case]
    open(os.path.join(folder, name), "wb").write(content)
    with pytest.raises(SystemExit) as e:
        train_mnist.main(["--data-dir", folder, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and os.path.join(folder, name) in err, err
    others = [f for f in os.listdir(folder) if f != name and f in err]
    assert not others or case == "fewer labels", err  # the one bad file (a count mismatch names the pair)


@pytest.mark.parametrize("case,content", [
    ("not a dict", lambda b: [b]), ("no labels", lambda b: {"data": b["data"]}),
    ("float data", lambda b: {**b, "data": b["data"].astype(np.float32)}),
    ("short rows", lambda b: {**b, "data": b["data"][:, :100]}), ("label 10", lambda b: {**b, "labels": [10] * len(b["labels"])}),
    ("label count", lambda b: {**b, "labels": b["labels"][:-1]}), ("not a pickle", None),
])
def test_a_broken_cifar_batch_is_named_alone(case, content, tmp_path, capsys):
    root = conftest.make_cifar_dataset(str(tmp_path / "data"), "cifar10")
    path = os.path.join(root, "cifar-10-batches-py", "data_batch_3")
    with open(path, "rb") as f:
        batch = pickle.load(f)
    with open(path, "wb") as f:
        f.write(b"this is not a pickle") if content is None else pickle.dump(content(batch), f)
    with pytest.raises(SystemExit) as e:
        train_cifar.main(["--data-dir", root, "--out", str(tmp_path / "out"), "--model", "resnet18"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and path in err and "data_batch_1" not in err, err


def test_disk_full_is_one_line(mnist_dir, tmp_path, monkeypatch, capsys):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(results.os, "fsync", full)  # every atomic write fails as on a full disk
    with pytest.raises(SystemExit) as e:
        train_mnist.main(["--data-dir", mnist_dir, "--out", str(tmp_path), "--epochs", "1"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 1 and "No space left on device" in err and len(err.splitlines()) == 1
    assert not list(tmp_path.rglob(conftest.TEMPORARY))  # the failed writes left no temporary file
