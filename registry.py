"""The loss registry of losses.py, read without importing torch; parameter range checks.

losses.py defines each multiclass loss as a function `name(logits, targets, <parameters with
defaults>, reduction)`, lists the names in LOSSES and describes every parameter in PARAMS. The
training flags (--tau, --q, ...), run names and the keys and labels of aggregated tables all come from
there. Tools that never train (cli.py's command line, grid.py, results.py, aggregate.py) need
those facts but not torch's 1.5 s import, so they read them here from the source text: PARAMS is a
literal and the defaults are the functions' own, so losses.py stays the one place to edit.
"""
import ast
import functools
import numbers
import os

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "losses.py")


@functools.lru_cache(maxsize=None)
def read(path=SOURCE):
    """(losses, params): {loss: {parameter: default}} in registry order, and the PARAMS table."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    values = {node.targets[0].id: node.value for node in tree.body
              if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)}
    functions = {node.name: node.args for node in tree.body if isinstance(node, ast.FunctionDef)}
    params = ast.literal_eval(values["PARAMS"])
    losses = {}
    for key in values["LOSSES"].keys:
        args = functions[key.value]
        with_defaults = zip([a.arg for a in args.args][len(args.args) - len(args.defaults):], args.defaults)
        losses[key.value] = {k: ast.literal_eval(v) for k, v in with_defaults if k in params}
    return losses, params


def param_names():
    """Every registry parameter, in table order (the columns of result files, after `loss`)."""
    return list(read()[1])


def check(name, value, interval):
    """float(value) if it is a real number in `interval` ("(1, inf)", "(0, 1]"), else ValueError."""
    low, high = (float(end) for end in interval[1:-1].split(","))
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok:
        v = float(value)
        ok = (v > low if interval[0] == "(" else v >= low) and (v < high if interval[-1] == ")" else v <= high)
    if not ok:
        raise ValueError(f"{name}={value!r} is not allowed: {name} must be a number in {interval}")
    return float(value)


def describe(losses, params):
    """One line naming every loss with the allowed range and default of each of its parameters;
    wrappers that every loss takes, off by default (logit_clip), once at the end."""
    def one(name):
        parts = [f"{k} in {params[k]['range']}, default {v:g}" for k, v in losses[name].items() if k not in wrappers]
        return f"{name} ({'; '.join(parts)})" if parts else name
    wrappers = [k for k in params if "wrapper" in params[k]]
    return ", ".join(one(name) for name in losses) + "".join(
        f"; every loss also takes {k} in {params[k]['range']} (default off)" for k in wrappers)
