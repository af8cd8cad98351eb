"""Tests for results.py (the result schema, atomic writes, run names) and for the module layout:
which module imports what."""
import ast
import os
import subprocess
import sys

import pytest

import aggregate
import catalog
import cli
import conftest
import results
import train_mnist
from results import read_csv

SCRIPTS = ["train_mnist.py", "train_cifar.py", "synthetic_long_servedio.py", "synthetic_ding.py", "aggregate.py",
           "runner.py", "bench.py", "gpu_check.py"]
TORCH_FREE = ["aggregate", "tables", "figures", "runner", "slurm", "grid", "cli", "grid_cli", "results", "loss_specs",
              "margin_losses", "synthetic_long_servedio", "synthetic_ding", "gpu_check", "catalog"]


# ---------------------------------------------------------------------------------------------
# The schema: every column written is a setting, a metric or provenance.

def test_every_written_column_is_classified(mnist_dir, tmp_path):
    # per-example clipping and a validation split: every optional column gets a value
    train_mnist.main(["--data-dir", mnist_dir, "--out", str(tmp_path), "--epochs", "1", "--rho", "0.4", "--val-split",
                      "0.2", "--clip-norm", "0.5", "--clip-mode", "per-example"])
    (row,) = read_csv(tmp_path / "summary.csv")
    epochs = read_csv(os.path.join(conftest.only_run_dir(tmp_path), "epochs.csv"))
    assert results.unclassified(row) == [] and results.unclassified(epochs[0], epochs=True) == []
    assert all(row[c] != "" for c in ("clipped_clean", "val_acc", "grad_norm_corrupted"))
    for script in catalog.SCRIPTS:  # every setting of every script, including those of train_cifar.py
        assert results.unclassified(cli.parse(script, [])[1]) == []


def test_schema_classes_are_disjoint():
    assert len(results.SCHEMA) == len(results.SETTINGS) + len(results.METRICS) + len(results.PROVENANCE)


def test_writer_refuses_an_unclassified_column(tmp_path):
    path = str(tmp_path / "summary.csv")
    with pytest.raises(ValueError, match="new_metric"):
        results.record_summary(path, {"run": "x", "dataset": "mnist", "new_metric": 1.0})
    assert not os.path.exists(path)


def test_provenance_and_unknown_columns_never_split_a_table_row(tmp_path):
    # Three trials of one setting that ran on different machines and versions, one with a column
    # this version does not know: still one row with n = 3 (the old NOT_SETTINGS list split them).
    rows = [dict(run=f"r{seed}", dataset="mnist", model="lenet", loss="ce", rho=0.2, seed=seed, epochs=20,
                 test_acc=90 + seed, device=device, torch=torch, finished=f"2026-01-0{seed + 1}", **extra)
            for seed, device, torch, extra in ((0, "cpu", "2.1", {}), (1, "cuda", "2.2", {}),
                                               (2, "cuda", "2.2", {"new_metric": 5}))]
    conftest.write_csv_rows(tmp_path / "summary.csv", rows)
    assert aggregate.main(["--results", str(tmp_path), "--no-plot"]) == 0
    (cell,) = read_csv(tmp_path / "tables" / "mnist.csv")
    assert cell["label"] == "CE" and cell["n"] == "3" and float(cell["mean"]) == 91.0


def test_an_unset_setting_leaves_run_names_alone():
    _, config = cli.parse("train_mnist.py", ["--loss", "phuber_ce"])
    assert results.run_name({**config, "gamma": None}) == results.run_name(config)  # a parameter added later
    assert results.run_name({**config, "gamma": 2.0}) != results.run_name(config)


def test_run_name_of_a_configuration_is_stable():
    # The name (and its hash of every set setting) of a run recorded in golden/
    _, config = cli.parse("train_mnist.py", ["--loss", "phuber_ce", "--rho", "0.4", "--epochs", "2"])
    assert results.run_name(config) == "mnist-lenet-phuber_ce-tau10-sym0.4-ns0-s0-1aa2de66"
    assert os.path.isdir(os.path.join(conftest.ROOT, "golden", "runs", results.run_name(config)))


def test_atomic_write_leaves_no_temporary_file(tmp_path):
    seen = []

    def write(f):
        seen.extend(tmp_path.glob(conftest.TEMPORARY))  # the temporary file exists while writing ...
        raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        results.write_atomic(str(tmp_path / "x.csv"), write)
    assert len(seen) == 1 and not list(tmp_path.glob(conftest.TEMPORARY))  # ... and is gone after a failure
    assert not (tmp_path / "x.csv").exists()


# ---------------------------------------------------------------------------------------------
# Layout: no script imports another script; nothing imports torch unless it trains.

def imported_modules(path):
    tree = ast.parse(open(path, encoding="utf-8").read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_script_imports_another_script():
    scripts = {s[:-3] for s in SCRIPTS}
    for script in SCRIPTS:
        assert not imported_modules(os.path.join(conftest.ROOT, script)) & scripts, script
    for module in os.listdir(conftest.ROOT):  # nor does a module
        if module.endswith(".py") and module not in SCRIPTS and not module.startswith(("test_", "conftest")):
            assert not imported_modules(os.path.join(conftest.ROOT, module)) & scripts, module


@pytest.mark.parametrize("module", TORCH_FREE)
def test_torch_free_modules_load_no_torch(module):
    code = (f"import sys; import {module}; "
            "print(sorted(m for m in ('torch', 'models', 'training', 'losses', 'data') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=conftest.ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------
# A new loss with a new parameter needs only losses.py (docs/adding-a-loss.md, same edit).

FOCAL = '''
def focal(logits, targets, gamma=2.0, reduction="mean", check_targets=True):
    """Focal loss -(1 - p_y)^gamma log p_y (Lin et al., 2017)."""
    gamma = check_param("gamma", gamma)
    _check_reduction(reduction)
    log_p = _log_probs(logits, targets, check_targets)[1]
    return _reduce(-(-torch.expm1(log_p)) ** gamma * log_p, reduction)


class Focal(_Loss):
    """Focal(gamma=2)"""
    fn = staticmethod(focal)

'''


@pytest.mark.slow
def test_a_new_loss_needs_only_losses_py(mnist_dir, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    for name in os.listdir(conftest.ROOT):
        if name.endswith(".py") and not name.startswith("test_") or name in ("reference_results.csv", "run_all.sh"):
            (project / name).write_bytes(open(os.path.join(conftest.ROOT, name), "rb").read())
    source = (project / "losses.py").read_text()
    source = source.replace("# The registry: each key", FOCAL + "# The registry: each key")
    source = source.replace('PARAMS = {\n', 'PARAMS = {\n    "gamma": {"range": "[0, inf)", "help": "focal loss exponent", '
                            '"symbol": "γ", "tex": r"$\\gamma$"},\n')
    source = source.replace('"nce_rce": NCERCE}', '"nce_rce": NCERCE, "focal": Focal}')
    (project / "losses.py").write_text(source)
    run = lambda *argv: subprocess.run([sys.executable, *argv], cwd=project, capture_output=True, text=True)  # noqa
    assert "--gamma GAMMA" in run("train_mnist.py", "--help").stdout
    out = tmp_path / "out"
    done = run("train_mnist.py", "--data-dir", mnist_dir, "--out", str(out), "--loss", "focal", "--gamma", "1",
               "--epochs", "1", "--limit-train", "64", "--limit-test", "64")
    assert done.returncode == 0, done.stderr
    (row,) = read_csv(out / "summary.csv")
    assert row["gamma"] == "1.0" and row["run"].startswith("mnist-lenet-focal-gamma1-")
    bad = run("train_mnist.py", "--loss", "focal", "--gamma", "-1", "--out", str(out))
    assert bad.returncode == 2 and "gamma=-1.0 is not allowed" in bad.stderr
    assert run("aggregate.py", "--results", str(out), "--no-plot").returncode == 0
    assert "| focal γ = 1 |" in (out / "tables" / "mnist.md").read_text()
    listing = subprocess.run(["bash", str(project / "run_all.sh"), "--list", "--datasets", "mnist", "--losses",
                              "focal"], capture_output=True, text=True, env=dict(os.environ, PYTHON=sys.executable))
    assert "mnist-focal-rho0-seed0" in listing.stdout
