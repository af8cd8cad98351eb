"""Reliability (issue 12): the grid runner never reports success it did not have, signals stop
everything, paths are the caller's, one process per run, a resumed run is the same run, and every
bad input, from flags or from files, gets one line.

run_all.sh's engine runs in this process (conftest.run_grid) unless the process is what is tested:
signals, a lock held by another process, a pool's workers, bash's own checks."""
import contextlib
import csv
import datetime
import errno
import io
import json
import os
import pickle
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

import aggregate
import config
import conftest
import grid
import grid_cli
import results
import runner
import synthetic_ding
import synthetic_long_servedio
import tables
import tiny_data
import train_cifar
import train_mnist
import training
from conftest import only_run_dir, run_all, run_grid, write_csv_rows
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


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:  # it has ended
        return b""


def with_marker(marker):
    """Processes whose environment holds MARKER=marker: what a test started, and everything they start."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if f"MARKER={marker}".encode() in f.read().split(b"\0") and live(pid) and int(pid) != os.getpid():
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
    result = run_grid(*selection, *task, "--out", str(tmp_path / "out"), "--", "--data-dir", data_root, *extra,
                      check=False)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "cell 1/" not in result.stdout and not (tmp_path / "out").exists()  # nothing written


def test_a_python_without_torch_fails_instead_of_skipping(tmp_path, data_root):
    bare = os.path.join(sys.base_prefix, "bin", "python3")  # the interpreter this environment was made from
    has_torch = "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is None)"  # not importing it
    if subprocess.run([bare, "-c", has_torch], capture_output=True).returncode == 0:
        pytest.skip(f"{bare} has torch")
    result = run_grid(*QUICK_MNIST, "--out", str(tmp_path), "--", "--data-dir", data_root, check=False,
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
    result = run_grid("--datasets", "mnist", *args, "--out", str(tmp_path / "out"), check=False)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_values_pass_through_exactly():
    out = run_grid("--dry-run", "--datasets", "mnist", "--losses", "phuber_ce", "--taus", "1.0000001,2",
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
    result = run_all("--list", check=False, env={"PYTHON": str(tmp_path / "no-python")})  # run_all.sh's own check
    assert result.returncode == 2 and "is not a command" in result.stderr and len(result.stderr.splitlines()) == 1


@pytest.mark.slow
def test_failing_cells_fail_the_grid(tmp_path, data_root):
    # every cell diverges: each is "failed" with the last line of its log, and the exit status is 1
    result = run_grid("--quick", "--datasets", "mnist", "--losses", "ce,linear", "--rhos", "0", "--out",
                      str(tmp_path / "a"), "--", "--data-dir", data_root, "--lr", "1e30", "--limit-train", "64",
                      "--limit-test", "64", check=False)
    assert result.returncode == 1 and "0 ran, 0 already finished, 0 skipped (data unavailable), 2 failed" in result.stdout
    assert result.stdout.count("non-finite training loss at epoch 1") == 4  # as it happens and in the summary


@pytest.mark.slow
@pytest.mark.xdist_group("quick_grid")
def test_a_failing_aggregation_fails_the_grid(tmp_path, quick_grid):
    # the cell is done, but aggregate.py cannot write its tables: that is a failure too
    out = tmp_path / "b"
    shutil.copytree(quick_grid.out, out)
    shutil.rmtree(out / "tables")
    (out / "tables").write_text("a file where the tables folder goes")
    result = run_grid(*QUICK_MNIST, "--out", str(out), "--", "--data-dir", str(quick_grid.data), check=False)
    assert "0 ran, 1 already finished" in result.stdout and "aggregate.py FAILED" in result.stdout
    assert result.returncode == 1


@pytest.mark.slow
def test_missing_data_is_skipped_naming_the_files_and_where(tmp_path):
    empty = conftest.unreachable_folder(tmp_path)
    result = run_grid("--quick", "--datasets", "mnist,cifar10,cifar100", "--losses", "ce", "--rhos", "0", "--out",
                      str(tmp_path), "--", "--data-dir", str(empty))
    assert result.returncode == 0 and "0 ran, 0 already finished, 3 skipped (data unavailable), 0 failed" in result.stdout
    mnist, cifar, cifar100 = (line for line in result.stdout.splitlines() if line.startswith("skipping"))
    assert "train-images-idx3-ubyte" in mnist and str(empty) in mnist
    assert "data_batch_1" in cifar and os.path.join(str(empty), "cifar-10-batches-py") in cifar
    assert cifar100.startswith("skipping cifar100: cifar100 not found")


# ---------------------------------------------------------------------------------------------
# 2. Ctrl-C and SIGTERM stop the whole grid; --gpus is checked; pools die with their parent.

def cuda_visible_devices(pid):
    with open(f"/proc/{pid}/environ", "rb") as f:
        return dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v).get(b"CUDA_VISIBLE_DEVICES", b"").decode()


@pytest.mark.slow
@pytest.mark.parametrize("signum,status,workers", [  # SIGINT and SIGTERM take one path in the runner
    (signal.SIGINT, 130, ["--gpus", "0,1"]),
    (signal.SIGTERM, 143, ["--gpus", "0", "--per-gpu", "2"]),  # two cells on one GPU at the same time
], ids=["sigint-two-gpus", "sigterm-per-gpu-2"])
def test_a_signal_stops_every_worker_and_cell_and_the_grid_resumes(signum, status, workers, tmp_path, data_root):
    """The runner is a process here: the signal is what is tested. The SIGINT case then resumes the
    grid to its end (the same command: each cell from its checkpoint, each on its worker once)."""
    out = tmp_path / "out"
    selection = [*workers, "--quick", "--datasets", "mnist", "--losses", "ce,linear", "--rhos", "0", "--out", str(out)]
    # 100 one-step epochs: a cell still runs seconds after the other's first checkpoint, and resumes in seconds
    cells = ["--", "--data-dir", data_root, "--device", "cpu", "--epochs", "100", "--limit-train", "32",
             "--limit-test", "32"]
    gpus = {"CUDA_VISIBLE_DEVICES": "0,1"}  # two "GPUs" on a CPU machine; --device cpu runs the cells there
    grid_process = subprocess.Popen(["bash", "run_all.sh", *selection, *cells], cwd=conftest.ROOT,
                                    env=dict(os.environ, PYTHON=sys.executable, **gpus), stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
    runs = out / "runs"
    wait_for(lambda: runs.is_dir() and sum((d / "checkpoint.pt").exists() for d in runs.iterdir()) == 2,
             proc=grid_process)
    running = processes_mentioning(str(out))
    assert len(running) == 3 and grid_process.pid in running  # the runner and one cell per worker, at once ...
    cells_now = sorted(set(running) - {grid_process.pid})
    assert sorted(int(results.lock_holder(str(d))) for d in runs.iterdir()) == cells_now  # ... each holding its run
    assert sorted(map(cuda_visible_devices, cells_now)) == (["0", "1"] if "0,1" in workers else ["0", "0"])
    grid_process.send_signal(signum)  # to the runner alone, as SLURM or a parent process would
    assert grid_process.wait(timeout=60) == status and "interrupted" in grid_process.stdout.read()
    wait_for(lambda: not processes_mentioning(str(out)), seconds=30)  # no worker, no cell left
    assert not (out / "summary.csv").exists()
    if signum != signal.SIGINT:
        return
    again = run_grid(*selection, *cells, env=gpus)
    assert "2 ran, 0 already finished" in again.stdout and len(read_csv(out / "summary.csv")) == 2
    assert all("resuming after epoch" in open(p).read() for p in (out / "logs").iterdir())
    started = [line.split(": ", 1)[1].split(" (")[0] for line in again.stdout.splitlines() if "] cell " in line]
    numbers = sorted(int(line.split("] cell ")[1].split("/")[0]) for line in again.stdout.splitlines() if "] cell " in line)
    assert numbers == [1, 2]  # two workers starting together still number their cells apart
    assert sorted(started) == ["mnist-ce-rho0-seed0", "mnist-linear-rho0-seed0"]  # every cell once


@pytest.mark.parametrize("gpus,visible,message", [
    ("a", "0,1", "distinct integer GPU ids"), ("0,0", "0,1", "distinct integer GPU ids"), ("-1", "0,1", "distinct"),
    ("2", "0,1", "2 GPU(s) visible here (ids 0-1)"), ("0", "", "0 GPU(s) visible here"),
])
def test_bad_gpus_are_one_line(gpus, visible, message):
    result = run_grid("--gpus", gpus, "--datasets", "mnist", check=False, env={"CUDA_VISIBLE_DEVICES": visible})
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
    result = run_grid(*args, "--datasets", "mnist", "--out", str(tmp_path / "out"), check=False,
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


SLEEPERS = """
import subprocess, sys, time
import pytest

@pytest.mark.parametrize("i", range(4))
def test_sleeps(i):
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])  # a process a test starts
    time.sleep(300)
"""


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("make"), reason="no make here")
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_make_test_stops_on_ctrl_c_and_on_a_signal_to_make(how, tmp_path):
    """`make test`, its recipe as CI runs it, on four tests that each start a process and sleep: Ctrl-C
    (SIGINT to the terminal's process group) or SIGTERM to make alone (a parent's, timeout's) stops
    make, pytest, its workers and the tests' processes in seconds, without a crash, leaving nothing."""
    shutil.copy(os.path.join(conftest.ROOT, "conftest.py"), tmp_path)  # the suite's hooks and settings
    (tmp_path / "test_sleepers.py").write_text(SLEEPERS)
    venv, scratch = tmp_path / "venv", tmp_path / "tmp"
    venv.mkdir()
    scratch.mkdir()
    (venv / "installed").touch()  # make's venv: made (the recipe runs this interpreter)
    marker = str(tmp_path)
    make = subprocess.Popen(["make", "test", f"PY={sys.executable}", f"VENV={venv}",
                             f"TESTS=-p no:cacheprovider {tmp_path / 'test_sleepers.py'}"], cwd=conftest.ROOT,
                            env=dict(os.environ, MARKER=marker, TMPDIR=str(scratch)), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_for(lambda: sum(b"time.sleep(300)" in cmdline(p) for p in with_marker(marker)) == 2, proc=make)
        start = time.time()  # two workers, each in a test
        if how == "ctrl-c":
            os.killpg(make.pid, signal.SIGINT)
        else:
            make.send_signal(signal.SIGTERM)
        output = make.communicate(timeout=60)[0]
    finally:  # a failure above leaves nothing running either
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait()
    assert make.returncode != 0 and time.time() - start < 30, output
    assert not re.search(r"Segmentation fault|core dumped|Traceback", output), output
    wait_for(lambda: not with_marker(marker), seconds=15)  # no worker, no test's process left
    assert [p.name for p in scratch.iterdir()] in ([], [f"pytest-of-{os.environ.get('USER', 'root')}"])


# ---------------------------------------------------------------------------------------------
# 3. Paths: the caller's, with spaces.

@pytest.mark.slow
@pytest.mark.xdist_group("quick_grid")
def test_paths_with_spaces_relative_to_the_caller(quick_grid):
    # conftest.quick_grid ran it from "my work" with --out "my results" -- --data-dir "my data/set"
    assert "6 ran" in quick_grid.stdout and len(read_csv(quick_grid.out / "summary.csv")) == 5
    assert quick_grid.out == quick_grid.caller / "my results"
    assert (quick_grid.out / "tables" / "mnist.md").exists() and not (quick_grid.caller.parent / "my results").exists()


# ---------------------------------------------------------------------------------------------
# 4. One process per run folder.

@pytest.mark.slow
def test_one_process_per_run_and_a_stale_lock_is_taken_over(mnist_dir, tmp_path, monkeypatch, capsys):
    flags = ["--data-dir", mnist_dir, "--out", str(tmp_path), "--limit-train", "64", "--limit-test", "64"]
    first = subprocess.Popen([sys.executable, "train_mnist.py", *flags, "--epochs", "300"], cwd=conftest.ROOT,
                             stdout=subprocess.DEVNULL)  # another process holds the run's lock
    wait_for(lambda: (tmp_path / "runs").is_dir() and any((d / "checkpoint.pt").exists()
                                                           for d in (tmp_path / "runs").iterdir()), proc=first)
    for extra in ([], ["--resume"], ["--force"]):  # the same run twice, in any mode: one line, exit 2
        with pytest.raises(SystemExit) as e:
            train_mnist.main([*flags, "--epochs", "300", *extra])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and f"is in progress (pid {first.pid})" in err and len(err.splitlines()) == 1, err
    first.kill()  # its lock goes with it: the next start takes it over and resumes
    first.wait()
    with pytest.raises(SystemExit) as e:
        train_mnist.main([*flags, "--epochs", "3", "--resume"])
    assert e.value.code == 2 and "differs in epochs (300 there, 3 here)" in capsys.readouterr().err
    (run_dir,) = (tmp_path / "runs").iterdir()
    holders = []

    def holder_then_stop(run, row):  # the first epoch of the resumed run: who holds the lock now
        holders.append(results.lock_holder(str(run_dir)))
        raise KeyboardInterrupt  # running to epoch 300 would take long: test_pipeline resumes to the end
    monkeypatch.setattr(training.RunFolder, "end_epoch", holder_then_stop)
    with pytest.raises(SystemExit) as e:
        train_mnist.main([*flags, "--epochs", "300", "--resume"])
    assert e.value.code == 130 and "resuming after epoch" in capsys.readouterr().out  # the stale lock was taken over
    assert holders == [str(os.getpid())]


# ---------------------------------------------------------------------------------------------
# 5. A resumed run is the same run.

INTERRUPTED = ["--epochs", "3", "--limit-train", "64", "--limit-test", "64"]  # the interrupted run's settings


@pytest.fixture(scope="module")
def interrupted_run(mnist_dir, tmp_path_factory):
    """A results folder holding one interrupted run of 3 epochs (its checkpoint is epoch 3): Ctrl-C just
    before it finishes. Made once; `interrupted` copies it for each test."""
    out = tmp_path_factory.mktemp("interrupted")
    err = io.StringIO()

    def ctrl_c(*args):
        raise KeyboardInterrupt
    with pytest.MonkeyPatch.context() as m, contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        m.setattr(training.RunFolder, "finish", ctrl_c)
        with pytest.raises(SystemExit) as e:
            train_mnist.main(["--data-dir", mnist_dir, "--out", str(out), *INTERRUPTED])
    assert e.value.code == 130
    return dict(out=out, err=err.getvalue(), threads=torch.get_num_threads())


def interrupted(interrupted_run, out):
    """A copy of the interrupted run in `out`; its run folder."""
    shutil.copytree(interrupted_run["out"], out, dirs_exist_ok=True)
    return only_run_dir(out)


def resume_argv(mnist_dir, out, *extra):
    return ["--data-dir", mnist_dir, "--out", str(out), *INTERRUPTED, "--resume", *extra]


def test_interrupt_is_one_line_and_leaves_a_checkpoint(interrupted_run):
    err = interrupted_run["err"].strip()
    assert "interrupted; its last checkpoint is epoch 3: rerun with --resume" in err and len(err.splitlines()) == 1
    assert os.path.exists(os.path.join(only_run_dir(interrupted_run["out"]), "checkpoint.pt"))


def test_resume_refuses_other_data(interrupted_run, tmp_path, capsys):
    interrupted(interrupted_run, tmp_path)
    other = tiny_data.make_idx_dataset(str(tmp_path / "other"), seed=1)  # same sizes, other images and labels
    with pytest.raises(SystemExit) as e:
        train_mnist.main(resume_argv(other, tmp_path))
    err = capsys.readouterr().err
    assert e.value.code == 2 and "was made on other data (clean_labels, images, noisy_labels, test_labels differ)" in err
    assert not (tmp_path / "summary.csv").exists()


@pytest.mark.parametrize("changed,difference", [(["--lr", "0.002"], "lr (0.001 there, 0.002 here)"),
                                                (["--epochs", "5"], "epochs (3 there, 5 here)")])
def test_resume_with_changed_settings_names_the_interrupted_run(changed, difference, interrupted_run, mnist_dir,
                                                                tmp_path, capsys):
    run_dir = interrupted(interrupted_run, tmp_path)
    argv = resume_argv(mnist_dir, tmp_path, *changed)
    with pytest.raises(SystemExit) as e:
        train_mnist.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"the interrupted run {os.path.basename(run_dir)} differs in {difference}" in err
    assert train_mnist.main(argv + ["--force"]) == 0  # --force starts the other run


def test_leftover_temporary_files_go_at_the_next_start(interrupted_run, mnist_dir, tmp_path):
    run_dir = interrupted(interrupted_run, tmp_path)
    for name in (".checkpoint.pt4x8k2m.tmp", ".epochs.csvq7.tmp"):  # a kill during an atomic write
        open(os.path.join(run_dir, name), "wb").write(b"\0" * 1000)
    open(tmp_path / ".summary.csvz3.tmp", "w").write("half a row")
    assert train_mnist.main(resume_argv(mnist_dir, tmp_path)) == 0
    assert not list(tmp_path.rglob(conftest.TEMPORARY))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "foreign"])
def test_a_corrupt_checkpoint_is_one_line(damage, interrupted_run, mnist_dir, tmp_path, capsys):
    checkpoint = os.path.join(interrupted(interrupted_run, tmp_path), "checkpoint.pt")
    data = open(checkpoint, "rb").read()
    payloads = {"truncate": data[:len(data) // 2], "garbage": os.urandom(5000), "empty": b"",
                "foreign": pickle.dumps({"model": datetime.datetime(2026, 1, 1)})}  # not tensors and plain values
    open(checkpoint, "wb").write(payloads[damage])
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        train_mnist.main(resume_argv(mnist_dir, tmp_path))
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


IDX_CASES = ["header cut", "data cut", "bad magic", "wrong size", "labels in images", "label 10", "label 255",
             "fewer labels"]


@pytest.mark.parametrize("case", IDX_CASES)
def test_a_broken_idx_file_is_named_alone(case, tmp_path, capsys):
    folder = tiny_data.make_idx_dataset(str(tmp_path / "data"))
    variants = idx_variants(folder)
    assert list(variants) == IDX_CASES
    name, content = variants[case]
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
    root = tiny_data.make_cifar_dataset(str(tmp_path / "data"), "cifar10")
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


# ---------------------------------------------------------------------------------------------
# 8. Issue 20: results files as a spreadsheet or an editor leaves them, settings that must not mix,
#    special files, and every failure one line.

def mnist_run(mnist_dir, out, *extra):
    return ["--data-dir", mnist_dir, "--out", str(out), "--epochs", "1", "--limit-train", "64", "--limit-test", "64",
            *extra]


def as_a_spreadsheet_saves_it(path):
    """What Excel's "CSV UTF-8" does to a file it opened and saved: a byte-order mark, CRLF line ends,
    whole numbers without their '.0' (10000.0 -> 10000), TRUE / FALSE for booleans, and a row of
    empty fields where a row's cells were cleared."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    cell = lambda text: text.upper() if text in ("True", "False") else re.sub(r"^(-?\d+)\.0$", r"\1", text)  # noqa
    with open(path, "w", newline="", encoding="utf-8-sig") as f:
        csv.writer(f, lineterminator="\r\n").writerows([[cell(c) for c in row] for row in rows] + [[""] * len(rows[0])])


def test_a_summary_saved_by_a_spreadsheet_keeps_its_runs(mnist_dir, tmp_path, capsys):
    assert train_mnist.main(mnist_run(mnist_dir, tmp_path)) == 0
    as_a_spreadsheet_saves_it(tmp_path / "summary.csv")
    capsys.readouterr()
    assert train_mnist.main(mnist_run(mnist_dir, tmp_path)) == 0
    assert "already finished" in capsys.readouterr().out  # recognised, not trained again
    assert train_mnist.main(mnist_run(mnist_dir, tmp_path, "--seed", "1")) == 0  # rewrites the summary
    with open(tmp_path / "summary.csv", encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split(",")
    assert header[0] == "run" and len(header) == len(set(header))  # one run column, no byte-order mark
    assert [r["seed"] for r in read_csv(tmp_path / "summary.csv")] == ["0", "1"]
    assert aggregate.main(["--results", str(tmp_path), "--no-plot"]) == 0
    (cell,) = read_csv(tmp_path / "tables" / "mnist.csv")
    assert cell["n"] == "2"  # the spreadsheet's row (10000, FALSE) and the new one (10000.0, False): one cell
    assert "skipping" not in capsys.readouterr().err


def test_the_grid_recognises_the_runs_of_a_summary_a_spreadsheet_saved(tmp_path, data_root):
    # --task 0: the cell alone, as a SLURM task runs it (a whole grid would check the data and aggregate, in
    # processes; it skips a finished cell in test_a_failing_aggregation_fails_the_grid)
    selection = [*QUICK_MNIST, "--task", "0", "--out", str(tmp_path), "--", "--data-dir", data_root]
    opts = grid_cli.parse_grid(selection)
    (cell,) = opts.cells
    write_csv_rows(tmp_path / "summary.csv", [good_row(run=runner.run_name(cell, opts), rho="0.0", epochs="1")])
    as_a_spreadsheet_saves_it(tmp_path / "summary.csv")
    before = (tmp_path / "summary.csv").read_bytes()
    result = run_grid(*selection)
    assert "0 ran, 1 already finished" in result.stdout and not (tmp_path / "runs").exists(), result.stdout
    assert (tmp_path / "summary.csv").read_bytes() == before


DAMAGED = {  # a row as an editor, a copy or a crash can leave it, and what its warning names
    "not UTF-8": (b"r9,mnist,lenet,ce,,,,0.2,9,0,20,9\xe9.0\n", "not UTF-8"),
    "a field short": (b"r9,mnist,lenet,ce,,,,0.2,9,0,20\n", "11 fields, the header has 12"),
    "a field too many": (b"r9,mnist,lenet,ce,,,,0.2,9,0,20,90.0,x\n", "13 fields, the header has 12"),
    "a NUL byte": (b"r9,mnist,lenet,ce,,,,0.2,9,0\x00,20,90.0\n", "NUL"),
    "cut inside a quote": (b'r9,mnist,"len', "3 fields, the header has 12"),
}


def damaged_summary(folder, damage):
    rows = [good_row(run=f"r{s}", seed=str(s), test_acc=str(90 + s)) for s in (0, 1, 2)]
    write_csv_rows(folder / "summary.csv", rows)
    with open(folder / "summary.csv", "ab") as f:
        f.write(DAMAGED[damage][0])
    return folder / "summary.csv"


@pytest.mark.parametrize("damage", list(DAMAGED))
def test_a_damaged_row_is_skipped_by_name_and_never_rewritten(damage, mnist_dir, tmp_path, capsys):
    path = damaged_summary(tmp_path, damage)
    before = path.read_bytes()
    assert aggregate.main(["--results", str(tmp_path), "--no-plot"]) == 0
    err = capsys.readouterr().err
    assert "summary.csv line 5: " in err and DAMAGED[damage][1] in err and len(err.strip().splitlines()) == 1, err
    (cell,) = read_csv(tmp_path / "tables" / "mnist.csv")
    assert cell["n"] == "3" and float(cell["mean"]) == 91.0  # the three good rows
    # a run would rewrite the summary: it refuses to start, naming the row, and leaves the file alone
    with pytest.raises(SystemExit) as e:
        train_mnist.main(mnist_run(mnist_dir, tmp_path))
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "summary.csv line 5: " in err and len(err.splitlines()) == 1, err
    assert path.read_bytes() == before and not (tmp_path / "runs").exists()


def test_the_grid_refuses_a_summary_with_a_bad_row_before_any_cell(tmp_path, data_root):
    path = damaged_summary(tmp_path, "not UTF-8")
    before = path.read_bytes()
    result = run_grid(*QUICK_MNIST, "--out", str(tmp_path), "--", "--data-dir", data_root, check=False)
    assert result.returncode == 2 and "summary.csv line 5: not UTF-8" in result.stderr and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and path.read_bytes() == before


def test_a_long_field_is_a_field(mnist_dir, tmp_path, capsys):
    rows = [good_row(run=f"r{s}", seed=str(s), test_acc=str(90 + s), code="x" * (200_000 if s == 0 else 12))
            for s in (0, 1, 2)]
    write_csv_rows(tmp_path / "summary.csv", rows)
    assert aggregate.main(["--results", str(tmp_path), "--no-plot"]) == 0
    assert read_csv(tmp_path / "tables" / "mnist.csv")[0]["n"] == "3" and "skipping" not in capsys.readouterr().err
    assert train_mnist.main(mnist_run(mnist_dir, tmp_path)) == 0  # rewrites the summary, every field kept
    assert [len(r["code"]) for r in read_csv(tmp_path / "summary.csv")[:3]] == [200_000, 12, 12]


def test_a_header_doubled_by_the_old_writer_is_read_as_one_column(tmp_path):
    path = tmp_path / "summary.csv"  # what the runner wrote after a spreadsheet's byte-order mark
    path.write_text("\ufeffrun,seed,run\nold,0,\n,1,new\nx,2,y\n", encoding="utf-8")
    found = []
    assert results.read_csv(path, bad=lambda line, why: found.append((line, why))) == [
        dict(run="old", seed="0"), dict(run="new", seed="1")]
    assert found == [(4, "run is 'x' and 'y'")]


@pytest.mark.parametrize("changes,compared,title", [
    ({}, True, "mnist: test accuracy"),
    (dict(amp="fp16"), True, "mnist: test accuracy"), (dict(channels_last="True"), True, "mnist: test accuracy"),
    (dict(init="authors-code"), True, "mnist: test accuracy"),
    (dict(noise="instance"), False, "mnist, instance-dependent noise: test accuracy"),
    (dict(noise="asymmetric"), False, "mnist, asymmetric noise: test accuracy"),
    (dict(logit_clip="1.0"), False, "mnist: test accuracy"),  # the row says it: CE + LogitClip δ = 1
    (dict(amp="bf16"), False, "mnist, amp bf16: test accuracy"),
    (dict(val_split="0.1"), False, "mnist, val_split 0.1: test accuracy"),
    (dict(epochs="5"), False, "mnist, epochs 5: test accuracy"),
    (dict(lr="0.01"), False, "mnist, lr 0.01: test accuracy"),
    (dict(noise_seed="1"), False, "mnist, noise_seed 1: test accuracy"),
    (dict(limit_train="256"), False, "mnist, limit_train 256: test accuracy"),
])
def test_published_numbers_only_beside_runs_of_the_published_settings(changes, compared, title, tmp_path):
    rows = [conftest.summary_row("mnist", "ce", 0.6, s, 90.0 + s, run=f"r{s}", **changes) for s in (0, 1, 2)]
    write_csv_rows(tmp_path / "summary.csv", rows)
    assert aggregate.main(["--results", str(tmp_path), "--no-plot"]) == 0
    assert (tmp_path / "tables" / "mnist_comparison.md").exists() == compared
    assert (tmp_path / "tables" / "mnist.md").read_text().splitlines()[0].startswith(f"# {title}")
    (entry,), _ = tables.table_entries(tables.load_runs(tmp_path), grid.report_rows("mnist"))
    published = tables.load_reference(os.path.join(conftest.ROOT, "reference_results.csv"))
    key = tables.reference_key("mnist", entry["key"], 0.6, entry["setting"])  # the figure's markers too
    assert (key in published) == compared


def test_the_noise_seed_table_compares_only_the_published_settings(tmp_path):
    rows = [conftest.summary_row("mnist", "ce", 0.6, s, 90.0 + s + ns, run=f"r{noise}{s}{ns}", noise=noise, noise_seed=ns)
            for noise in ("symmetric", "instance") for ns in (0, 1) for s in (0, 1, 2)]
    write_csv_rows(tmp_path / "summary.csv", rows)
    assert aggregate.main(["--results", str(tmp_path), "--no-plot"]) == 0
    table = {r["loss"]: r for r in read_csv(tmp_path / "tables" / "noise_seeds.csv") if r["noise_seed"] == "original paper"}
    assert table["CE [noise=symmetric]"]["mean"] == "91.1" and table["CE [noise=instance]"]["mean"] == ""


def test_cpu_thread_count_is_recorded_and_a_resume_across_counts_refused(interrupted_run, mnist_dir, tmp_path,
                                                                          capsys):
    threads, made = torch.get_num_threads(), interrupted_run["threads"]
    run_dir = interrupted(interrupted_run, tmp_path)
    assert json.load(open(os.path.join(run_dir, "config.json")))["threads"] == made
    other = made + 1
    try:
        torch.set_num_threads(other)
        with pytest.raises(SystemExit) as e:
            train_mnist.main(resume_argv(mnist_dir, tmp_path))
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and f"made with {made} CPU threads, this process has {other}" in err
        assert len(err.splitlines()) == 1
        torch.set_num_threads(made)
        assert train_mnist.main(resume_argv(mnist_dir, tmp_path)) == 0
        (row,) = read_csv(tmp_path / "summary.csv")
        assert row["threads"] == str(made) and results.SCHEMA["threads"] == "provenance"
        assert row["run"] == os.path.basename(run_dir)  # provenance: not in the name, which runs are known by
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("args,message", [
    (["--memorisation", "--datasets", "cifar10"], "--datasets: 'cifar10' is not allowed with --memorisation: use "
                                                  "fashion-mnist, mnist"),
    (["--memorisation", "--datasets", "synthetic"], "'synthetic' is not allowed with --memorisation"),
    (["--table3", "--datasets", "synthetic"], "'synthetic' is not allowed with --table3"),
    (["--cpu-workers", "1", "--datasets", "mnist", "--", "--device", "cuda"],
     "--device 'cuda' is not allowed with --cpu-workers"),
])
@pytest.mark.parametrize("mode", [["--list"], ["--dry-run"], []])
def test_settings_that_cannot_combine_are_refused_up_front(args, message, mode, tmp_path):
    selection = [*mode, *args] if "--" not in args else [*mode, *args[:args.index("--")], "--out", str(tmp_path / "out"),
                                                         *args[args.index("--"):]]
    result = run_grid(*selection, check=False)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == "" and not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag", ["--logit-clip", "--taus", "--rhos", "--datasets", "--losses", "--out", "--gpus",
                                  "--cpu-workers", "--trials", "--task", "--tau-candidates", "--val-split"])
def test_an_empty_grid_option_is_refused(flag):
    result = run_grid("--datasets", "mnist", flag, "", "--list", check=False)
    assert result.returncode == 2 and f"{flag} '' is not allowed" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""


@pytest.mark.parametrize("script,flag", [(train_mnist, "--out"), (train_mnist, "--data-dir"), (train_mnist, "--device"),
                                         (aggregate, "--out"), (aggregate, "--reference"), (aggregate, "--candidates")])
def test_an_empty_script_option_is_refused(script, flag, tmp_path, capsys):
    write_csv_rows(tmp_path / "summary.csv", [good_row()])
    with pytest.raises(SystemExit) as e:
        script.main(["--results" if script is aggregate else "--out", str(tmp_path), flag, ""])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and f"{flag} '' is not allowed (empty)" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "tables").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args", [["--cpu-workers", "²"], ["--trials", "²"], ["--task", "²"], ["--gpus", "²"],
                                  ["--trials", "٣"]])
def test_digits_that_are_not_ascii_are_one_line(args):
    result = run_grid("--datasets", "mnist", *args, "--list", check=False, env={"CUDA_VISIBLE_DEVICES": "0"})
    assert result.returncode == 2 and f"{args[0]} '{args[1]}' is not allowed" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_result_row_with_unicode_digits_is_named(tmp_path, capsys):
    write_csv_rows(tmp_path / "summary.csv", [good_row(run=f"r{s}", seed=s) for s in ("0", "1", "²", "٣")])
    assert aggregate.main(["--results", str(tmp_path), "--no-plot"]) == 0
    err = capsys.readouterr().err
    assert "line 4: seed '²' is not an integer" in err and "line 5: seed '٣' is not an integer" in err
    assert read_csv(tmp_path / "tables" / "mnist.csv")[0]["n"] == "2"


@pytest.mark.parametrize("place", ["a file", "read-only"])
def test_an_unwritable_grid_out_is_one_line_before_the_preflight(place, tmp_path, data_root, request):
    out = tmp_path / "out"
    if place == "a file":
        out.write_text("")
    else:
        out = request.getfixturevalue("read_only") / "out"
    result = run_grid(*QUICK_MNIST, "--out", str(out), "--", "--data-dir", data_root, check=False)
    assert result.returncode == 2 and "cannot hold results" in result.stderr and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.fixture
def small_disk(tmp_path):
    """A folder on a file system of 256 kB, to fill: a tmpfs mount (root only)."""
    folder = tmp_path / "small"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root)")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_during_training_is_one_line(mnist_dir, small_disk, capsys):
    with pytest.raises(SystemExit) as e:  # the checkpoint (LeNet and Adam's moments, 0.7 MB) does not fit
        train_mnist.main(mnist_run(mnist_dir, small_disk))
    err = capsys.readouterr().err.strip()
    assert e.value.code == 1 and "No space left on device" in err and len(err.splitlines()) == 1, err
    assert str(small_disk) in err and "None" not in err
    assert not list(small_disk.rglob(conftest.TEMPORARY))


def test_a_checkpoint_on_a_full_disk_is_an_oserror(small_disk):
    with pytest.raises(OSError) as e:  # 0.8 MB: torch.save into the file raised RuntimeError (inline_container.cc)
        training.save_checkpoint(str(small_disk / "checkpoint.pt"), dict(model=torch.zeros(200_000)))
    assert e.value.errno == errno.ENOSPC and not list(small_disk.iterdir())


def test_aggregate_on_a_full_disk_names_the_folder(small_disk, tmp_path, capsys):
    # 30 table rows, each named by 30 kB: their tables do not fit in 256 kB
    write_csv_rows(tmp_path / "summary.csv", [good_row(run=f"r{s}", loss=f"{s}" + "x" * 30_000) for s in range(30)])
    assert aggregate.main(["--results", str(tmp_path), "--out", str(small_disk), "--no-plot"]) == 1
    err = capsys.readouterr().err.strip()
    assert f"cannot write the tables to {small_disk}: No space left on device" in err and "None" not in err


@contextlib.contextmanager
def bounded(seconds=60, memory=2 << 30):
    """A reader of a special file that never ends (/dev/zero, a FIFO without a writer) fails the test
    in `seconds` (SIGALRM interrupts the read or the open), and one that reads without bound fails with
    MemoryError at `memory` more bytes of address space, instead of hanging or taking the machine."""
    def late(signum, frame):
        raise TimeoutError(f"still reading after {seconds} s")
    previous = signal.signal(signal.SIGALRM, late)
    limit = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/status") as f:
        used = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (used + memory, limit[1]))
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        resource.setrlimit(resource.RLIMIT_AS, limit)


def test_result_files_that_are_not_regular_files_are_skipped_by_name(tmp_path, capsys):
    folder = tmp_path / "memorisation"  # where every run's epochs.csv is read (peak accuracy)
    write_csv_rows(folder / "summary.csv", [good_row(run=f"r{s}", seed=str(s)) for s in range(3)])
    for run in ("r0", "r1"):
        (folder / "runs" / run).mkdir(parents=True)
    os.symlink("/dev/zero", folder / "runs" / "r0" / "epochs.csv")
    os.mkfifo(folder / "runs" / "r1" / "epochs.csv")
    os.symlink("/dev/zero", tmp_path / "summary_zero.csv")
    os.mkfifo(tmp_path / "summary_fifo.csv")
    (tmp_path / "synthetic").mkdir()  # the synthetic experiments' figures are copied
    os.symlink("/dev/zero", tmp_path / "synthetic" / "ding.png")
    os.mkfifo(tmp_path / "synthetic" / "long_servedio.pdf")
    with bounded():
        assert aggregate.main(["--results", str(tmp_path), "--no-plot"]) == 0
    out, err = capsys.readouterr()
    assert "memorisation mnist (3 runs)" in out, err
    for name in ("r0/epochs.csv", "r1/epochs.csv", "summary_zero.csv", "summary_fifo.csv", "ding.png",
                 "long_servedio.pdf"):
        assert f"{name}: not a regular file" in err, name


@pytest.mark.parametrize("special", ["/dev/zero", "fifo"])
def test_a_label_file_that_is_not_a_regular_file_is_one_line(special, cifar_dir, tmp_path, capsys):
    if special == "fifo":
        special = str(tmp_path / "fifo")
        os.mkfifo(special)
    with bounded(), pytest.raises(SystemExit) as e:
        train_cifar.main(["--data-dir", cifar_dir, "--out", str(tmp_path / "out"), "--noise", "human", "--noise-file",
                          special])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and f"{special}: not a regular file" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("special", ["/dev/zero", "fifo"])
def test_a_checkpoint_that_is_not_a_regular_file_is_one_line(special, interrupted_run, mnist_dir, tmp_path, capsys):
    checkpoint = os.path.join(interrupted(interrupted_run, tmp_path), "checkpoint.pt")
    os.remove(checkpoint)
    if special == "fifo":
        os.mkfifo(checkpoint)
    else:
        os.symlink(special, checkpoint)
    with bounded(), pytest.raises(SystemExit) as e:
        train_mnist.main(resume_argv(mnist_dir, tmp_path))
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and f"{checkpoint} is not a readable checkpoint of this code (not a regular file)" \
        in err and len(err.splitlines()) == 1, err


def test_a_sibling_config_that_is_not_a_regular_file_is_passed_over(mnist_dir, tmp_path, capsys):
    other = tmp_path / "runs" / "other"
    other.mkdir(parents=True)
    os.symlink("/dev/zero", other / "config.json")
    (other / "checkpoint.pt").write_bytes(b"")
    with bounded():
        assert train_mnist.main([*mnist_run(mnist_dir, tmp_path), "--resume"]) == 0
    assert "final test accuracy" in capsys.readouterr().out


def test_a_cell_running_elsewhere_is_reported_as_such(tmp_path, data_root):
    # --task 0: the cell alone, as a SLURM task runs it (a whole grid first checks the data, a process)
    selection = [*QUICK_MNIST, "--task", "0", "--out", str(tmp_path), "--", "--data-dir", data_root]
    opts = grid_cli.parse_grid(selection)
    (cell,) = opts.cells
    log, stop = tmp_path / "logs" / f"{cell.id}.log", threading.Event()

    def the_other_process_logs():  # what a cell left running by a killed runner keeps writing
        while not stop.is_set():
            if log.parent.exists():
                with open(log, "a") as f:
                    f.write("epoch 3/20 lr 1.00e-03 loss 0.1 (the other process)\n")
            time.sleep(0.005)
    writer = threading.Thread(target=the_other_process_logs)
    with results.run_lock(os.path.join(tmp_path, "runs", runner.run_name(cell, opts))):
        writer.start()
        try:
            result = run_grid(*selection, check=False)  # the lock is this process's: lock_holder sees it as another's
        finally:
            stop.set()
            writer.join()
    failed = [line for line in result.stdout.splitlines() if "failed" in line.lower()]
    assert result.returncode == 1 and any(f"in progress in another process (pid {os.getpid()})" in line
                                          for line in failed), result.stdout
    assert not any("the other process" in line for line in failed)


def test_dry_run_shows_the_tau_that_tuning_chose(tmp_path):
    selection = ["--tune-tau", "--datasets", "mnist", "--losses", "phuber_ce", "--rhos", "0.6", "--trials", "1",
                 "--out", str(tmp_path)]
    assert "--tau TUNED" in run_grid(*selection, "--dry-run").stdout  # tuning has not run yet
    opts = grid_cli.parse_grid(selection)
    tuning = [c for c in opts.cells if c.tuning]
    write_csv_rows(tmp_path / "tuning" / "summary.csv", [
        dict(run=runner.run_name(c, opts), dataset="mnist", loss="phuber_ce", tau=c.argv[c.argv.index("--tau") + 1],
             rho="0.6", seed="0", val_acc="70.0" if c.argv[c.argv.index("--tau") + 1] == "2" else "60.0")
        for c in tuning])
    lines = run_grid(*selection, "--dry-run").stdout.splitlines()
    assert "TUNED" not in "".join(lines) and "--tau 2 " in lines[-1]


def test_train_cifar_help_describes_its_own_data_folder():
    (line,) = [h for h in config.parser("train_cifar.py").format_help().split("\n  --")
               if h.startswith("data-dir")]
    assert "IDX" not in line and "cifar-10-batches-py" in line
