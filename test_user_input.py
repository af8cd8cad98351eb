"""What users type (issue 29): numbers as they write them, and a mistake in catalog.py's tables, which
every entry point reports in one line."""
import copy
import os
import shutil
import subprocess
import sys

import pytest

import catalog
import config
import grid_cli
from conftest import ROOT


@pytest.mark.parametrize("text,value", [("-1e-4", -1e-4), ("-4", -4.0), ("-.5", -0.5), ("-2E+1", -20.0)])
def test_a_negative_number_in_scientific_notation_is_a_value(text, value):
    assert config.parse("train_mnist.py", ["--loss", "sce", "--A", text]).A == value


@pytest.mark.parametrize("argv,message", [
    (["--loss", "sce", "--A", "-inf"], "A=-inf is not allowed: A must be a number in (-inf, 0)"),
    (["--lr", "-1e3"], "--lr -1000.0 is not allowed"),
])
def test_a_negative_number_out_of_range_is_refused_by_value_not_as_an_option(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        config.parse("train_mnist.py", argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and "expected one argument" not in err


def test_run_all_takes_a_negative_number_as_a_value(capsys):
    with pytest.raises(SystemExit):
        grid_cli.parse_grid(["--logit-clip", "-1e-4", "--list"])
    err = capsys.readouterr().err
    assert "--logit-clip '-1e-4' is not allowed" in err and "expected one argument" not in err
    assert grid_cli.parse_grid(["--logit-clip", "1e3", "--datasets", "mnist"]).selection["logit_clip"] == 1000.0


@pytest.mark.parametrize("field,value,message", [
    ("peers", {"sce": {"alhpa": 0.01, "beta": 1.0}}, "peers['sce'] has alhpa: sce takes alpha, beta, A"),
    ("peers", {"sec": {"alpha": 0.01}}, "peers names loss 'sec'"),
    ("losses", {**catalog.DATASETS["mnist"]["losses"], "gce": {"q": 0.7, "tua": 2.0}}, "losses['gce'] has tua"),
    ("extra_rows", (dict(loss="phuber_ce", tua=50.0),), "extra_rows has {'loss': 'phuber_ce', 'tua': 50.0}"),
])
def test_a_misspelt_loss_or_parameter_in_the_tables_is_named(field, value, message):
    """A misspelt peer parameter would silently leave the loss's default in force: a wrong result."""
    table = copy.deepcopy(catalog.DATASETS)
    table["mnist"][field] = value
    with pytest.raises(ValueError, match="dataset 'mnist': " + message.replace("[", r"\[").replace("(", r"\(")):
        catalog.check(table)


@pytest.mark.slow
def test_a_mistake_in_the_tables_is_one_line_at_every_entry_point(tmp_path):
    for name in os.listdir(ROOT):
        if name.endswith((".py", ".sh", ".csv")):
            shutil.copy(os.path.join(ROOT, name), tmp_path / name)
    source = (tmp_path / "catalog.py").read_text()
    (tmp_path / "catalog.py").write_text(source.replace('"sce": dict(alpha=0.01,', '"sce": dict(alhpa=0.01,', 1))
    env = dict(os.environ, PYTHON=sys.executable)
    for argv in ([sys.executable, "train_mnist.py", "--help"], [sys.executable, "aggregate.py", "--no-plot"],
                 ["bash", "run_all.sh", "--list"]):
        done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, env=env)
        assert done.returncode == 1 and done.stderr.strip().splitlines() == [
            "error: catalog.py: dataset 'mnist': peers['sce'] has alhpa: sce takes alpha, beta, A"], (argv, done.stderr)
