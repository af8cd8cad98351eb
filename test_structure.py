"""Rules of the code base that a reviewer would otherwise check by eye, checked on every module's
syntax tree (ast): no test module, no torch, about a second.

The product modules are every *.py but the tests (test_*.py) and their fixture file (conftest.py).
Their command-line modules are the scripts (a `__main__` block) and grid_cli.py (run_all.sh's
command line); the rest are library modules. The one parser of training flags is config.py, and of
run_all.sh's options grid_cli.py: nothing else reads argv by hand."""
import ast
import glob
import os

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
MODULES = sorted(os.path.basename(p) for p in glob.glob(os.path.join(HERE, "*.py"))
                 if not os.path.basename(p).startswith("test_") and os.path.basename(p) != "conftest.py")


def tree(module):
    with open(os.path.join(HERE, module), encoding="utf-8") as f:
        return ast.parse(f.read(), module)


def is_main_block(node):
    return isinstance(node, ast.If) and isinstance(node.test, ast.Compare) \
        and getattr(node.test.left, "id", None) == "__name__"


def is_script(module):
    return any(is_main_block(node) for node in tree(module).body)


COMMAND_LINE = {m for m in MODULES if is_script(m)} | {"grid_cli.py"}
PARSERS = {"config.py", "grid_cli.py"}
LINES = 400


def imports(module):
    """The top-level names of the modules `module` imports, anywhere in it (lazy imports too)."""
    found = set()
    for node in ast.walk(tree(module)):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_the_modules_are_found():
    assert {"config.py", "errors.py", "training.py", "data.py", "losses.py", "train_mnist.py"} <= set(MODULES)
    assert {"train_mnist.py", "train_cifar.py", "aggregate.py", "runner.py", "gpu_check.py"} <= COMMAND_LINE
    assert not {"config.py", "training.py", "data.py", "results.py", "grid.py"} & COMMAND_LINE


@pytest.mark.parametrize("module", MODULES)
def test_no_module_has_over_400_lines(module):
    with open(os.path.join(HERE, module), encoding="utf-8") as f:
        assert len(f.read().splitlines()) <= LINES


@pytest.mark.parametrize("module", MODULES)
def test_product_code_imports_neither_conftest_nor_pytest(module):
    assert not imports(module) & {"conftest", "pytest"}


@pytest.mark.parametrize("module", sorted(set(MODULES) - COMMAND_LINE))
def test_library_modules_import_no_command_line_module(module):
    assert not imports(module) & {m[:-3] for m in COMMAND_LINE}


def reads_argv(node):
    """Whether `node` reads a command line by hand: argv.index(...), a test `x in argv`, an element
    argv[i] (a slice of it too), or a text's startswith('--...'): what only a parser should do."""
    def argv(n):
        return "argv" in (getattr(n, "id", None) or getattr(n, "attr", None) or "")
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        if node.func.attr == "index" and argv(node.func.value):
            return True
        if node.func.attr == "startswith" and any(isinstance(a, ast.Constant) and str(a.value).startswith("--")
                                                  for a in node.args):
            return True
    if isinstance(node, ast.Compare) and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops):
        return any(argv(c) for c in node.comparators)
    return isinstance(node, ast.Subscript) and argv(node.value)


@pytest.mark.parametrize("module", sorted(set(MODULES) - PARSERS))
def test_nothing_outside_the_one_parser_reads_argv_by_hand(module):
    found = [f"{module}:{node.lineno} {ast.unparse(node)[:80]}" for node in ast.walk(tree(module)) if reads_argv(node)]
    assert not found


def test_the_argv_rule_finds_what_it_forbids():
    for code in ('argv.index("--noise-key")', 'x = "--device" in argv', "argv[i + 1]", 'a.startswith("--epochs=")',
                 "sys.argv[1:]"):
        assert any(reads_argv(n) for n in ast.walk(ast.parse(code))), code
    for code in ("main(argv)", "[*argv, '--task']", 'a == "TUNED"'):
        assert not any(reads_argv(n) for n in ast.walk(ast.parse(code))), code


@pytest.mark.parametrize("module", MODULES)
def test_no_function_takes_more_than_five_positional_parameters(module):
    """A function outside the tests takes at most 5 positional parameters: its positional-only and
    positional-or-keyword ones, `self` and `cls` included; keyword-only ones (after `*`) and *args /
    **kwargs are not counted. More settings than that travel as one object (config.Config, a run's
    resolved configuration) or by keyword."""
    found = [f"{module}:{node.lineno} {getattr(node, 'name', 'lambda')} takes {n}"
             for node in ast.walk(tree(module)) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
             and (n := len(node.args.posonlyargs) + len(node.args.args)) > 5]
    assert not found


def exits(node):
    """Whether `node` ends the process: sys.exit(...), exit(...), quit(...), os._exit(...), a call of a
    function named fail, or raise SystemExit."""
    if isinstance(node, ast.Raise) and node.exc is not None:
        exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
        return getattr(exc, "id", None) == "SystemExit"
    if not isinstance(node, ast.Call):
        return False
    f = node.func
    if isinstance(f, ast.Name):
        return f.id in ("exit", "quit", "fail")
    return isinstance(f, ast.Attribute) and (f.attr == "fail" or isinstance(f.value, ast.Name) and (
        (f.value.id, f.attr) in (("sys", "exit"), ("os", "_exit"))))


@pytest.mark.parametrize("module", MODULES)
def test_library_code_never_exits(module):
    """Library code raises (errors.Failure: a message and an exit status); only a script's edge ends the
    process: its `if __name__ == "__main__":` block (sys.exit(main())), and errors.edge, which main runs
    under and which turns a Failure into one line and the status. A pool worker that must die with
    its parent (synthetic_long_servedio.die_with_parent) is the one other exit, os._exit in a worker."""
    allowed = {("errors.py", "edge"), ("synthetic_long_servedio.py", "die_with_parent")}
    found = []

    def visit(node, function):
        if is_main_block(node):
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            function = node.name
        if exits(node) and (module, function) not in allowed:
            found.append(f"{module}:{node.lineno} in {function}: {ast.unparse(node)[:80]}")
        for child in ast.iter_child_nodes(node):
            visit(child, function)
    visit(tree(module), None)
    assert not found
