"""Rules of the code base that a reviewer would otherwise check by eye, checked on every module's
syntax tree (ast): no test module, no torch, about a second."""
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


def test_the_modules_are_found():
    assert {"cli.py", "experiment.py", "data.py", "losses.py", "train_mnist.py"} <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_no_function_takes_more_than_five_positional_parameters(module):
    """A function outside the tests takes at most 5 positional parameters: its positional-only and
    positional-or-keyword ones, `self` and `cls` included; keyword-only ones (after `*`) and *args /
    **kwargs are not counted. More settings than that travel as one object (experiment.Run, the run's
    resolved configuration) or by keyword."""
    found = [f"{module}:{node.lineno} {getattr(node, 'name', 'lambda')} takes {n}"
             for node in ast.walk(tree(module)) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
             and (n := len(node.args.posonlyargs) + len(node.args.args)) > 5]
    assert not found


def exits(node):
    """Whether `node` ends the process: sys.exit(...), exit(...), quit(...), os._exit(...), a call of a
    function named fail (the old cli.fail), or raise SystemExit."""
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


def is_main_block(node):
    return isinstance(node, ast.If) and isinstance(node.test, ast.Compare) \
        and getattr(node.test.left, "id", None) == "__name__"


@pytest.mark.parametrize("module", MODULES)
def test_library_code_never_exits(module):
    """Library code raises (cli.Failure: a message and an exit status); only a script's edge ends the
    process: its `if __name__ == "__main__":` block (sys.exit(main())), and cli.edge, which main runs
    under and which turns a Failure into one line and the status. A pool worker that must die with
    its parent (synthetic_long_servedio.die_with_parent) is the one other exit, os._exit in a worker."""
    allowed = {("cli.py", "edge"), ("synthetic_long_servedio.py", "die_with_parent")}
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
