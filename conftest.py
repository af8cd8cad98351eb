"""Shared pytest fixtures (the tiny datasets of tiny_data.py, written once per session) and test helpers."""
import csv
import os
import subprocess
import sys

import pytest

import catalog
import results
from tiny_data import make_cifar_dataset, make_idx_dataset

ROOT = os.path.dirname(os.path.abspath(__file__))
TIMING = {"epoch_seconds", "images_per_second", "wall_seconds", "finished"}


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end runs (processes, grids); the fast tier is -m 'not slow'")
    config.addinivalue_line("markers", "cuda: the CUDA tier (test_cuda.py), skipped without a GPU; CUDA_TIER_DEVICE=cpu "
                            "runs its logic on the CPU")


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


@pytest.fixture
def python():
    return sys.executable
