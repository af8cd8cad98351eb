"""The dataset catalog (catalog.py): one entry per dataset, read by every module, checked on import."""
import ast
import os
import subprocess
import sys

import pytest

import catalog
import cli
import conftest
import grid
from results import read_csv

MODULES = sorted(f for f in os.listdir(conftest.ROOT) if f.endswith(".py") and not f.startswith("test_")
                 and f != "conftest.py")


def docstrings(tree):
    return {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body
            and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}


def test_a_dataset_is_named_in_the_table_only():
    # any other module asks the table: a literal "cifar10" elsewhere is a fact kept in two places
    named = []
    for module in MODULES:
        tree = ast.parse(open(os.path.join(conftest.ROOT, module), encoding="utf-8").read())
        skip = docstrings(tree)
        named += [f"{module}:{node.lineno} {node.value!r}" for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and node.value in catalog.DATASETS and id(node) not in skip]
    assert named and all(n.startswith("catalog.py:") for n in named), [n for n in named
                                                                              if not n.startswith("catalog.py:")]


def test_no_module_hides_a_module_it_imports():
    # aggregate.py's function dataset_table would have hidden a module of that name: a table read as
    # dataset_table.DATASETS there fails only when that code runs
    for module in MODULES:
        tree = ast.parse(open(os.path.join(conftest.ROOT, module), encoding="utf-8").read())
        imported = {a.asname or a.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import)
                    for a in node.names}
        defined = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
        defined |= {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
                    if isinstance(t, ast.Name)}
        assert not imported & defined, module


def test_every_entry_is_well_formed_and_its_losses_run():
    catalog.check()
    assert set(catalog.DATASETS) >= {"mnist", "fashion-mnist", "cifar10", "cifar100"}
    for name, entry in catalog.DATASETS.items():
        assert name in catalog.scripts_datasets(entry["script"])
        for loss in {*entry["losses"], *entry.get("peers", {})}:  # each a registry loss with its own parameters
            _, config = cli.parse(entry["script"], ["--dataset", name, "--loss", loss])
            assert {k: config[k] for k in catalog.loss_defaults(name, loss)} == \
                catalog.loss_defaults(name, loss)
        for flags in entry.get("extra_rows", ()):
            cli.parse(entry["script"], ["--dataset", name, *grid.Row(flags["loss"], flags).argv()])


def entry(**changes):
    """Fashion-MNIST's entry under the name kmnist, with `changes` (None: that key removed)."""
    new = {**catalog.DATASETS["fashion-mnist"], **changes}
    return {"kmnist": {k: v for k, v in new.items() if v is not None}}


@pytest.mark.parametrize("table,message", [
    (entry(script=None), "dataset 'kmnist': its entry has no script, the training script (a key of SCRIPTS)"),
    # the case: the CIFAR script with MNIST's settings was AttributeError: 'momentum' in cli.parse
    (entry(script="train_cifar.py"), "dataset 'kmnist': settings lacks momentum, milestones, lr_gamma and has "
                                     "lr_decay, lr_decay_steps: train_cifar.py's optimiser (sgd) takes"),
    (entry(script="train_kmnist.py"), "dataset 'kmnist': script 'train_kmnist.py' is not a training script"),
    (entry(sizes=None, gpu_epoch_seconds=None), "dataset 'kmnist': its entry has no sizes, (training, test) images, for the time estimate; no gpu_epoch_seconds"),
    (entry(flips={9: 10}), "dataset 'kmnist': flips is not a dict of class -> class, each in [0, 10)"),
    (entry(format="cifar"), "dataset 'kmnist': format 'cifar' needs label_key, train_files, test_files"),
    (entry(losses={"gce": {"q": 0.7}}), "dataset 'kmnist': losses has no phuber_ce tau, phuber_gce tau, phuber_gce q"),
    (entry(settigns={}), "dataset 'kmnist': its entry has settigns, which are not fields"),
    (entry(human=dict(file="k.pt", default="a", grid=("b",), keys=("a",), aliases={})), "dataset 'kmnist': human "),
    ({k: v for k, v in catalog.DATASETS.items() if k != "cifar100"},
     "DEFAULT_GRID names dataset 'cifar100', which has no entry in DATASETS"),
])
def test_a_malformed_entry_is_one_line_naming_the_dataset_and_what_it_lacks(table, message):
    with pytest.raises(ValueError) as error:
        catalog.check({**catalog.DATASETS, **table} if "kmnist" in table else table)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_single_runs_defaults_are_the_tables_not_a_table_rows_order(monkeypatch):
    # before: grid.loss_defaults took the first matching row of the report's table, and memorisation_rows
    # picked rows by position: reordering CIFAR-100's rows turned a single run's tau 10 into 50
    expected = [cli.parse("train_cifar.py", ["--dataset", "cifar100", "--loss", loss])[1] for loss in grid.BASE]
    memorisation = grid.memorisation_rows()
    original = grid.report_rows
    monkeypatch.setattr(grid, "report_rows", lambda dataset: original(dataset)[::-1])
    assert [cli.parse("train_cifar.py", ["--dataset", "cifar100", "--loss", loss])[1] for loss in grid.BASE] == expected
    assert expected[0]["tau"] == 10.0 and grid.memorisation_rows() == memorisation
    assert [r.label for r in original("cifar100")][-1] == "PHuber-CE τ = 50"  # extra_rows: last, as in its Table 2


# ---------------------------------------------------------------------------------------------
# Adding a dataset is adding its entry (docs/adding-a-loss.md): the same edit, on a copy of the project.

TINY = '''    "tiny-fashion": dict(  # the tiny Fashion-MNIST of conftest.py, under a new name
        script="train_mnist.py", settings=MNIST_SETTINGS, losses=MNIST_LOSSES,
        classes=10, shape=(1, 28, 28), format="idx", folder="FashionMNIST", torchvision="FashionMNIST",
        flips={6: 0, 0: 6}, sizes=(600, 200), gpu_epoch_seconds=1),
'''
END = "\n}\n\n# The datasets of each study"


@pytest.mark.slow
def test_a_new_dataset_needs_only_its_entry(mnist_dir, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    tracked = subprocess.run(["git", "ls-files"], cwd=conftest.ROOT, capture_output=True, text=True, check=True)
    for name in tracked.stdout.split():
        if "/" not in name:  # the flat project; docs/ and golden/ play no part
            (project / name).write_bytes(open(os.path.join(conftest.ROOT, name), "rb").read())
    source = (project / "catalog.py").read_text()
    assert source.count(END) == 1
    (project / "catalog.py").write_text(source.replace(END, "\n" + TINY + "}\n\n# The datasets of each study"))
    env = dict(os.environ, PYTHON=sys.executable)
    listing = subprocess.run(["bash", "run_all.sh", "--list", "--datasets", "tiny-fashion"], cwd=project, env=env,
                             capture_output=True, text=True)
    assert listing.returncode == 0 and len(listing.stdout.splitlines()) == 72, listing.stderr  # Table 1's cells
    out = tmp_path / "out"
    done = subprocess.run(["bash", "run_all.sh", "--quick", "--datasets", "tiny-fashion", "--losses", "ce,phuber_ce",
                           "--rhos", "0,0.4", "--out", str(out), "--", "--data-dir", mnist_dir, "--device", "cpu"],
                          cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 ran" in done.stdout and "0 failed" in done.stdout
    rows = read_csv(out / "summary.csv")
    assert sorted((r["loss"], r["tau"], r["rho"]) for r in rows) == [("ce", "", "0.0"), ("ce", "", "0.4"),
                                                                      ("phuber_ce", "10.0", "0.0"),
                                                                      ("phuber_ce", "10.0", "0.4")]
    assert all(r["dataset"] == "tiny-fashion" and r["run"].startswith("tiny-fashion-lenet-") for r in rows)
    subprocess.run([sys.executable, "aggregate.py", "--results", str(out), "--no-plot"], cwd=project, check=True,
                   capture_output=True)
    table = (out / "tables" / "tiny-fashion.md").read_text()
    assert "| CE |" in table and "| PHuber-CE τ = 10 |" in table
    assert {"tiny-fashion.csv", "tiny-fashion.tex"} <= set(os.listdir(out / "tables"))
    default = subprocess.run([sys.executable, "-c", "import cli; print(cli.parse('train_mnist.py', [])[1]['dataset'])"],
                             cwd=project, capture_output=True, text=True, check=True)
    assert default.stdout.strip() == "mnist"  # an entry added last changes no script's default dataset
