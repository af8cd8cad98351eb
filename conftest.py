"""Shared pytest fixtures (the tiny datasets of tiny_data.py, written once per session) and test helpers."""
import contextlib
import csv
import io
import os
import shutil
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest

import catalog
import results
from tiny_data import make_cifar_dataset, make_idx_dataset

ROOT = os.path.dirname(os.path.abspath(__file__))
# One thread per process: the suite runs two pytest workers (make test) and the processes they start
# at once on as few as two cores, where torch's default (a thread per core) spins its threads against
# each other: a LeNet step took 40 times longer. Before torch is imported; the tests that need another
# count set it (test_golden.py: 2, as its files were recorded).
os.environ.setdefault("OMP_NUM_THREADS", "1")
TIMING = {"epoch_seconds", "images_per_second", "wall_seconds", "finished"}


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end runs (processes, grids); the fast tier is -m 'not slow'")
    config.addinivalue_line("markers", "xdist_group(name): tests that share a session fixture run in one pytest-xdist "
                            "worker (make test: --dist loadgroup)")
    config.addinivalue_line("markers", "cuda: the CUDA tier (test_cuda.py), skipped without a GPU; CUDA_TIER_DEVICE=cpu "
                            "runs its logic on the CPU")


def pytest_sessionfinish(session):
    """A run cut short leaves no process that a test started: SIGTERM to what is left of this process's
    children (a grid's runner stops its cells, a script its run). Where a signal to make ends pytest,
    its xdist workers are interrupted without one, and end here. Not in xdist's controller: its
    children are the workers."""
    config = session.config
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        return
    for task in os.listdir(f"/proc/{os.getpid()}/task") if os.path.isdir("/proc") else ():
        try:
            with open(f"/proc/{os.getpid()}/task/{task}/children") as f:
                children = [int(pid) for pid in f.read().split()]
        except OSError:
            continue
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


def without_timing(rows):
    """CSV rows without the wall-clock columns, which differ between two identical runs."""
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def write_csv_rows(path, rows):
    """Hand-made result rows as a CSV, the way a results folder from outside would hold them."""
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, columns)
        w.writeheader()
        w.writerows(rows)


def summary_row(dataset, loss, rho, seed, acc, **extra):
    """A summary.csv row as the training scripts write it, for aggregate.py's tests: the report's
    settings for the dataset (catalog.py; MNIST's for another) unless `extra` changes them."""
    entry = catalog.DATASETS.get(dataset, catalog.DATASETS["mnist"])
    report = {k: results.format_value(v) for k, v in entry["settings"].items()}
    row = dict(run=f"{dataset}-{loss}-{'-'.join(f'{k}{v}' for k, v in sorted(extra.items()))}-{rho}-{seed}",
               dataset=dataset, **report, loss=loss, tau="", q="", alpha="", beta="", clip_norm="",
               clip_mode="global", rho=rho, seed=seed, noise="symmetric", noise_seed=0, val_split=0.0,
               test_acc=acc, finished="2026-01-01T00:00:00")
    row.update({k: v for k, v in extra.items()})
    return row


def only_run_dir(out):
    (name,) = os.listdir(os.path.join(out, "runs"))
    return os.path.join(out, "runs", name)


def run_all(*args, env=None, check=True, cwd=ROOT, **kwargs):
    """bash run_all.sh ARGS with this interpreter as PYTHON; raises with its output if it fails."""
    env = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    result = subprocess.run(["bash", os.path.join(ROOT, "run_all.sh"), *args], cwd=cwd, env=env,
                            capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"run_all.sh {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def run_grid(*args, env=None, check=True, cwd=ROOT):
    """run_all.sh ARGS in this process: runner.main, as run_all.sh execs it, in milliseconds where
    run_all starts bash and Python. The same answer (a CompletedProcess: returncode, stdout, stderr);
    the cells, pre-flight checks and aggregate.py it starts are still processes (this interpreter).
    For what the process itself does (signals, exit on a dead parent), run_all."""
    import runner
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE)}
    out, err = io.StringIO(), io.StringIO()
    try:
        os.environ.update({"PYTHON": sys.executable, **(env or {})})
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = runner.main(list(args))
            except SystemExit as e:
                code = e.code
    finally:  # runner.Stopper's handlers for SIGINT and SIGTERM, and --list's SIGPIPE, are this process's
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    result = subprocess.CompletedProcess(["run_all.sh", *args], code or 0, out.getvalue(), err.getvalue())
    if check and result.returncode != 0:
        raise AssertionError(f"run_all.sh {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


TEMPORARY = ".*.tmp"  # the names results.write_atomic gives its temporary files (test_results.py checks)


def unreachable_folder(tmp_path):
    """A data folder that can never be created, so a download fails even with internet."""
    (tmp_path / "a file").write_text("")
    return tmp_path / "a file" / "data"


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory):
    return make_idx_dataset(str(tmp_path_factory.mktemp("mnist")))


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cifar"))
    make_cifar_dataset(root, "cifar10")
    make_cifar_dataset(root, "cifar100", n_train=300)
    return root


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """MNIST (torchvision's layout) and CIFAR-10 under one --data-dir, like a user's data/ folder."""
    root = str(tmp_path_factory.mktemp("data"))
    make_idx_dataset(os.path.join(root, "MNIST", "raw"), n_train=300, n_test=100)
    make_cifar_dataset(root, "cifar10", n_train=100, n_test=50)
    return root


@pytest.fixture(scope="session")
def quick_grid(tmp_path_factory, data_root):
    """One finished --quick grid, shared by the tests that read what a grid leaves behind (each marked
    xdist_group("quick_grid"), so that one pytest-xdist worker makes it). Run as a user would, from a
    folder of their own, with spaces in the paths and relative ones:

        cd "my work"; bash run_all.sh --cpu-workers 2 --quick --datasets synthetic,mnist --losses ce,phuber_ce \
            --rhos 0,0.4 --out "my results" -- --data-dir "my data/set"

    after the CIFAR-10 cell `--quick --datasets cifar10 --losses phuber_ce --rhos 0.4 --task 0 ... -- --model
    resnet18 --limit-train 32 --limit-test 32` (a step of a network a CPU trains in seconds) into the same
    folder, whose row aggregate.py then finds beside the others. 6 processes that import torch (the cells, the
    data check), 3 that do not (the synthetic cells, aggregate.py)."""
    caller = tmp_path_factory.mktemp("grid") / "my work"
    data = caller / "my data" / "set"
    shutil.copytree(data_root, data)
    paths = ["--out", "my results", "--", "--data-dir", "my data/set"]
    cifar = run_grid("--quick", "--datasets", "cifar10", "--losses", "phuber_ce", "--rhos", "0.4", "--task", "0",
                     *paths, "--model", "resnet18", "--limit-train", "32", "--limit-test", "32", cwd=caller)
    result = run_grid("--cpu-workers", "2", "--quick", "--datasets", "synthetic,mnist", "--losses", "ce,phuber_ce",
                      "--rhos", "0,0.4", *paths, cwd=caller, env={"CUDA_VISIBLE_DEVICES": ""})
    return SimpleNamespace(caller=caller, data=data, out=caller / "my results", cifar=cifar.stdout, stdout=result.stdout)


@pytest.fixture
def python():
    return sys.executable
