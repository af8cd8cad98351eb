"""Tests for results.py (the result schema, atomic writes, run names) and for the module layout:
which module imports what."""
import ast
import json
import os
import subprocess
import sys

import pytest

import aggregate
import catalog
import config
import conftest
import results
import train_mnist
from results import read_csv

SCRIPTS = ["train_mnist.py", "train_cifar.py", "synthetic_long_servedio.py", "synthetic_ding.py", "aggregate.py",
           "runner.py", "bench.py", "gpu_check.py"]
TORCH_FREE = ["aggregate", "tables", "figures", "runner", "slurm", "grid", "config", "errors", "grid_cli", "results",
              "margin_losses", "synthetic_long_servedio", "synthetic_ding", "gpu_check", "catalog"]


# ---------------------------------------------------------------------------------------------
# The schema: every column written is a setting, a metric or provenance.

def test_every_written_column_is_classified(mnist_dir, tmp_path):
    # per-example clipping and a validation split: every optional column gets a value
    train_mnist.main(["--data-dir", mnist_dir, "--out", str(tmp_path), "--epochs", "1", "--rho", "0.4", "--val-split",
                      "0.2", "--clip-norm", "0.5", "--clip-mode", "per-example", "--limit-train", "64", "--limit-test",
                      "64"])
    (row,) = read_csv(tmp_path / "summary.csv")
    epochs = read_csv(os.path.join(conftest.only_run_dir(tmp_path), "epochs.csv"))
    assert results.unclassified(row) == [] and results.unclassified(epochs[0], epochs=True) == []
    assert all(row[c] != "" for c in ("clipped_clean", "val_acc", "grad_norm_corrupted"))
    for script in catalog.SCRIPTS:  # every setting of every script, including those of train_cifar.py
        assert results.unclassified(config.parse(script, []).settings()) == []


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
    settings = config.parse("train_mnist.py", ["--loss", "phuber_ce"]).settings()
    assert results.run_name({**settings, "gamma": None}) == results.run_name(settings)  # a parameter added later
    assert results.run_name({**settings, "gamma": 2.0}) != results.run_name(settings)


def test_run_name_of_a_configuration_is_stable():
    # The name (and its hash of every set setting) of a run recorded in golden/
    settings = config.parse("train_mnist.py", ["--loss", "phuber_ce", "--rho", "0.4", "--epochs", "2"]).settings()
    assert results.run_name(settings) == "mnist-lenet-phuber_ce-tau10-sym0.4-ns0-s0-1aa2de66"
    assert os.path.isdir(os.path.join(conftest.ROOT, "golden", "runs", results.run_name(settings)))


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


def test_torch_free_modules_load_no_torch():
    # one fresh interpreter imports them in turn: the first that brings in torch (or a module that
    # needs it) is named, and none before it did
    code = ("import sys\n"
            "for module in sys.argv[1:]:\n"
            "    __import__(module)\n"
            "    heavy = sorted(m for m in ('torch', 'models', 'training', 'losses', 'data') if m in sys.modules)\n"
            "    if heavy:\n"
            "        sys.exit(f'{module} loads {heavy}')\n")
    out = subprocess.run([sys.executable, "-c", code, *TORCH_FREE], cwd=conftest.ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


# ---------------------------------------------------------------------------------------------
# A new loss with a new parameter: its function, module and registry entry in losses.py, and its line
# in catalog.LOSSES with the new parameter's in catalog.PARAMS (docs/adding-a-loss.md, same edit).

FOCAL = '''
def focal(logits, targets, *, gamma=2.0, logit_clip=None, reduction="mean", check_targets=True):
    """Focal loss -(1 - p_y)^gamma log p_y (Lin et al., 2017)."""
    gamma = check_param("gamma", gamma)
    _check_reduction(reduction)
    log_p = _log_probs(logits, targets, check_targets, logit_clip)[1]
    return _reduce(-(-torch.expm1(log_p)) ** gamma * log_p, reduction)


class Focal(_Loss):
    """Focal(gamma=2)"""
    fn = staticmethod(focal)


'''

# What a fresh interpreter does with the patched copy: every tool that reads the losses, as a user
# calls it (each main(argv) in turn, one torch import), its exit status and output checked by the test.
NEW_LOSS_TOOLS = '''
import contextlib, io, json, sys
import aggregate, config, runner, train_mnist
data, out = sys.argv[1:]
said = {}
def call(name, main, argv):
    err, text = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(text):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    said[name] = dict(code=code or 0, out=text.getvalue(), err=err.getvalue())
said["help"] = dict(code=0, out=config.parser("train_mnist.py").format_help(), err="")  # what --help prints
call("train", train_mnist.main, ["--data-dir", data, "--out", out, "--loss", "focal", "--gamma", "1", "--epochs", "1",
                                 "--limit-train", "64", "--limit-test", "64"])
call("bad", train_mnist.main, ["--loss", "focal", "--gamma", "-1", "--out", out])
call("aggregate", aggregate.main, ["--results", out, "--no-plot"])
call("list", runner.main, ["--list", "--datasets", "mnist", "--losses", "focal"])
print(json.dumps(said))
'''


@pytest.mark.slow
def test_a_new_loss_needs_losses_py_and_its_catalog_lines(mnist_dir, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    for name in os.listdir(conftest.ROOT):
        if name.endswith(".py") and not name.startswith("test_") or name in ("reference_results.csv", "run_all.sh"):
            (project / name).write_bytes(open(os.path.join(conftest.ROOT, name), "rb").read())
    source = (project / "losses.py").read_text()
    assert source.count("# The registry: each key") == 1 and source.count('"nce_rce": NCERCE}') == 1
    source = source.replace("# The registry: each key", FOCAL + "# The registry: each key")
    source = source.replace('"nce_rce": NCERCE}', '"nce_rce": NCERCE, "focal": Focal}')
    (project / "losses.py").write_text(source)
    catalog_source = (project / "catalog.py").read_text()
    assert catalog_source.count("PARAMS = {\n") == 1 and catalog_source.count("LOSSES = {\n") == 1
    catalog_source = catalog_source.replace("PARAMS = {\n", 'PARAMS = {\n    "gamma": {"range": "[0, inf)", "help": '
                                            '"focal loss exponent", "symbol": "γ", "tex": r"$\\gamma$"},\n')
    catalog_source = catalog_source.replace("LOSSES = {\n", 'LOSSES = {\n    "focal": {"gamma": 2.0},\n')
    (project / "catalog.py").write_text(catalog_source)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-c", NEW_LOSS_TOOLS, mnist_dir, str(out)], cwd=project,
                          capture_output=True, text=True, env=dict(os.environ, PYTHON=sys.executable))
    assert done.returncode == 0, done.stderr
    said = json.loads(done.stdout.splitlines()[-1])
    assert "--gamma GAMMA" in said["help"]["out"]
    assert said["train"]["code"] == 0, said["train"]["err"]
    (row,) = read_csv(out / "summary.csv")
    assert row["gamma"] == "1.0" and row["run"].startswith("mnist-lenet-focal-gamma1-")
    assert said["bad"]["code"] == 2 and "gamma=-1.0 is not allowed" in said["bad"]["err"]
    assert said["aggregate"]["code"] == 0, said["aggregate"]["err"]
    assert "| focal γ = 1 |" in (out / "tables" / "mnist.md").read_text()
    assert said["list"]["code"] == 0 and "mnist-focal-rho0-seed0" in said["list"]["out"], said["list"]["err"]
