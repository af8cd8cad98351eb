"""The dataset catalog (catalog.py): one entry per dataset, read by every module, checked on import."""
import ast
import copy
import functools
import inspect
import os
import subprocess
import sys
import types

import pytest

import catalog
import config
import conftest
import grid
import losses
from results import read_csv

MODULES = sorted(f for f in os.listdir(conftest.ROOT) if f.endswith(".py") and not f.startswith("test_")
                 and f != "conftest.py")


@functools.cache
def parsed(module):
    """The syntax tree of a module (each parsed once for the tests below)."""
    with open(os.path.join(conftest.ROOT, module), encoding="utf-8") as f:
        return ast.parse(f.read())


def docstrings(tree):
    return {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body
            and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}


def test_a_dataset_is_named_in_the_table_only():
    # any other module asks the table: a literal "cifar10" elsewhere is a fact kept in two places
    named = []
    for module in MODULES:
        tree = parsed(module)
        skip = docstrings(tree)
        named += [f"{module}:{node.lineno} {node.value!r}" for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and node.value in catalog.DATASETS and id(node) not in skip]
    assert named and all(n.startswith("catalog.py:") for n in named), [n for n in named
                                                                              if not n.startswith("catalog.py:")]


def test_no_module_hides_a_module_it_imports():
    # aggregate.py's function dataset_table would have hidden a module of that name: a table read as
    # dataset_table.DATASETS there fails only when that code runs
    for module in MODULES:
        tree = parsed(module)
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
            c = config.parse(entry["script"], ["--dataset", name, "--loss", loss])
            assert {k: getattr(c, k) for k in catalog.loss_defaults(name, loss)} == catalog.loss_defaults(name, loss)
        for flags in entry.get("extra_rows", ()):
            config.parse(entry["script"], ["--dataset", name, *grid.Row(flags["loss"], flags).argv()])


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
    def settings():
        single_runs = [["--dataset", "cifar100", "--loss", loss] for loss in grid.BASE]
        return [config.parse("train_cifar.py", argv).settings() for argv in single_runs]
    expected, memorisation = settings(), grid.memorisation_rows()
    original = grid.report_rows
    monkeypatch.setattr(grid, "report_rows", lambda dataset: original(dataset)[::-1])
    assert settings() == expected
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
    # A copy of the project, with the entry added to its catalog.py: the process is the behaviour (the
    # edited module is imported by run_all.sh, its cells' processes and aggregate.py).
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
    # two cells (the smallest grid with a loss that takes the entry's parameters), side by side
    done = subprocess.run(["bash", "run_all.sh", "--quick", "--datasets", "tiny-fashion", "--losses", "ce,phuber_ce",
                           "--rhos", "0.4", "--cpu-workers", "2", "--out", str(out), "--", "--data-dir", mnist_dir,
                           "--device", "cpu", "--limit-train", "64", "--limit-test", "64"],
                          cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 ran" in done.stdout and "0 failed" in done.stdout
    rows = read_csv(out / "summary.csv")
    assert sorted((r["loss"], r["tau"], r["rho"]) for r in rows) == [("ce", "", "0.4"), ("phuber_ce", "10.0", "0.4")]
    assert all(r["dataset"] == "tiny-fashion" and r["run"].startswith("tiny-fashion-lenet-") for r in rows)
    # run_all.sh ends with aggregate.py: the dataset's tables
    table = (out / "tables" / "tiny-fashion.md").read_text()
    assert "| CE |" in table and "| PHuber-CE τ = 10 |" in table
    assert {"tiny-fashion.csv", "tiny-fashion.tex"} <= set(os.listdir(out / "tables"))
    default = subprocess.run([sys.executable, "-c", "import config; print(config.parse('train_mnist.py', []).dataset)"],
                             cwd=project, capture_output=True, text=True, check=True)
    assert default.stdout.strip() == "mnist"  # an entry added last changes no script's default dataset


# ---------------------------------------------------------------------------------------------
# The loss tables: catalog.py's literal ones (read without torch: flags, run names, table keys) and
# losses.py's registry (the functions) hold the same losses, parameters and defaults.

NOT_PARAMETERS = ("reduction", "check_targets")  # every loss function's keywords that are no loss parameter


def table_problems(tables, registry):
    """What catalog's tables (LOSSES, WRAPPERS, PARAMS) and a loss registry ({name: module with .fn}) disagree
    on, one line each; [] when they agree."""
    catalog_losses, wrappers, params = tables
    problems = []
    if list(catalog_losses) != list(registry):  # the registry's order is the flags' and the tables' rows'
        problems.append(f"losses: {list(catalog_losses)} in catalog.LOSSES, {list(registry)} in losses.LOSSES")
    used = set(wrappers)
    for name, module in registry.items():
        if module.fn.__name__ != name:
            problems.append(f"{name}: its function is named {module.fn.__name__}")
        signature = inspect.signature(module.fn).parameters.values()
        takes = {p.name: p.default for p in signature if p.kind is p.KEYWORD_ONLY and p.name not in NOT_PARAMETERS}
        listed = {**catalog_losses.get(name, {}), **wrappers}
        if takes != listed or any(type(takes[k]) is not type(listed[k]) for k in takes.keys() & listed.keys()):
            problems.append(f"{name}: its signature takes {takes}, catalog.py lists {listed}")
        used |= set(takes)
    if used != set(params):
        problems.append(f"parameters: the losses take {sorted(used)}, catalog.PARAMS has {sorted(params)}")
    return problems


TABLES = (catalog.LOSSES, catalog.WRAPPERS, catalog.PARAMS)


def test_the_loss_tables_are_the_registrys():
    assert table_problems(TABLES, losses.LOSSES) == []
    for name, module in losses.LOSSES.items():  # and as losses.py reads its own defaults
        assert module.fn.__name__ == name
        assert losses.loss_defaults(name) == {**catalog.LOSSES[name], **catalog.WRAPPERS}


def focal(logits, targets, *, gamma=2.0, logit_clip=None, reduction="mean", check_targets=True):
    """A loss added to losses.py (docs/adding-a-loss.md) with a new parameter."""


def phuber_ce(logits, targets, *, tau="10.0", logit_clip=None, reduction="mean", check_targets=True):
    """PHuber-CE with its default written as text."""


def gce(logits, targets, *, q, logit_clip=None, reduction="mean", check_targets=True):
    """GCE without its default."""


def altered(tables=None, **registry):
    """A copy of (catalog's tables, losses.LOSSES) with the registry's entries `registry` replaced (None:
    removed), and the tables changed by the function `tables`."""
    new_tables = copy.deepcopy(TABLES)
    if tables:
        tables(*new_tables)
    new_registry = {**losses.LOSSES, **{k: v and types.SimpleNamespace(fn=v) for k, v in registry.items()}}
    return new_tables, {k: v for k, v in new_registry.items() if v is not None}


@pytest.mark.parametrize("tables,registry,problem", [
    # catalog.py edited without losses.py
    (*altered(lambda c, w, p: c["phuber_ce"].update(tau=2.0)), "phuber_ce: its signature takes {'tau': 10.0"),
    (*altered(lambda c, w, p: c.pop("sce")), "losses: ['ce', 'linear', 'gce', 'phuber_ce', 'phuber_gce', 'nce_rce']"),
    (*altered(lambda c, w, p: c.update(ce=c.pop("ce"))), "losses: ['linear'"),  # another order
    (*altered(lambda c, w, p: c["ce"].update(tau=10.0)), "ce: its signature takes {'logit_clip': None}"),
    (*altered(lambda c, w, p: w.update(logit_clip=1.0)), "ce: its signature takes {'logit_clip': None}, catalog.py "
                                                         "lists {'logit_clip': 1.0}"),
    (*altered(lambda c, w, p: p.update(gamma={})), "parameters: the losses take"),
    (*altered(lambda c, w, p: c["sce"].update(A=-4.0)), "sce: its signature takes"),  # the papers' A, not the codes'
    # losses.py edited without catalog.py
    (*altered(focal=focal), "'nce_rce'] in catalog.LOSSES, ['ce', 'linear', 'gce', 'phuber_ce', 'phuber_gce', 'sce', "
                            "'nce_rce', 'focal'] in losses.LOSSES"),
    (*altered(ce=losses.linear), "ce: its function is named linear"),
    (*altered(phuber_ce=phuber_ce), "phuber_ce: its signature takes {'tau': '10.0'"),  # parsed as a float: 10.0
    (*altered(gce=gce), "gce: its signature takes {'q': <class 'inspect._empty'>"),
    (*altered(phuber=losses.phuber_ce, phuber_ce=None),
     "phuber: its signature takes {'tau': 10.0, 'logit_clip': None}, catalog.py lists {'logit_clip': None}"),
], ids=["catalog-default", "catalog-lacks-a-loss", "catalog-order", "catalog-extra-parameter",
        "catalog-wrapper-default", "catalog-unused-parameter", "catalog-A", "new-loss-only-in-losses",
        "key-not-function", "text-default", "no-default", "renamed-key"])
def test_the_tables_check_fails_on_any_disagreement(tables, registry, problem):
    found = table_problems(tables, registry)
    assert any(problem in line for line in found), found
    assert TABLES == (catalog.LOSSES, catalog.WRAPPERS, catalog.PARAMS) and table_problems(TABLES, losses.LOSSES) == []
