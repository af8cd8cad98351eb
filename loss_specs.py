"""What losses.py's registry says, read without importing torch; parameter range checks.

The registry is losses.LOSSES with losses.PARAMS: losses.py defines each multiclass loss as a
function `name(logits, targets, <parameters with defaults>, reduction, check_targets)`, lists the
losses in LOSSES and describes every parameter in PARAMS. The training flags (--tau, --q, ...), run
names and the keys and labels of aggregated tables all come from there. Tools that never train
(cli.py's command line, grid.py, results.py, aggregate.py) need those facts but not torch's 1.5 s
import, so they read them here from the source text, and losses.py stays the one place to edit. Its
rules (losses.py's comment above PARAMS, docs/adding-a-loss.md) are checked as it is read, each with
a LossSpecError that names the rule:

    a loss's key in LOSSES is the name of its function (and of its module's `fn`)
    PARAMS is a literal, and so is the default of each parameter a loss takes
    every parameter is parsed as a float: its default is a number (None for a wrapper: off)
"""
import ast
import functools
import numbers
import os

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "losses.py")


class LossSpecError(ValueError):
    """losses.py breaks a rule of its registry; the message names the rule."""


@functools.lru_cache(maxsize=None)
def read(path=SOURCE):
    """(losses, params): {loss: {parameter: default}} in registry order, and the PARAMS table."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    values = {node.targets[0].id: node.value for node in tree.body
              if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)}
    functions = {node.name: node.args for node in tree.body if isinstance(node, ast.FunctionDef)}
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    name = os.path.basename(path)
    try:
        params = ast.literal_eval(values["PARAMS"])
        keys = [ast.literal_eval(key) for key in values["LOSSES"].keys]
    except (KeyError, ValueError, AttributeError) as e:
        raise LossSpecError(f"{name}: PARAMS and LOSSES must be dict literals at the top level, with the losses' "
                            f"names as LOSSES's keys ({type(e).__name__}: {e})") from None
    losses = {}
    for key, module in zip(keys, values["LOSSES"].values):
        if key not in functions:
            raise LossSpecError(f"{name}: LOSSES has the key {key!r} but defines no function {key}(): a loss's "
                                "key must be its function's name")
        fn = module_fn(classes.get(getattr(module, "id", None)))
        if fn not in (None, key):
            raise LossSpecError(f"{name}: LOSSES[{key!r}] is {module.id}, whose fn is {fn}: a loss's key must be "
                                "its function's name")
        losses[key] = defaults(name, key, functions[key], params)
    return losses, params


def module_fn(cls):
    """The function name of a loss module's `fn = staticmethod(name)`, or None."""
    for node in cls.body if cls else ():
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "fn" \
                and isinstance(node.value, ast.Call) and node.value.args:
            return getattr(node.value.args[0], "id", None)
    return None


def defaults(name, key, args, params):
    """{parameter: default} of loss function `key` (its arguments, `args`) for the PARAMS it takes."""
    given = [*zip([a.arg for a in args.args][len(args.args) - len(args.defaults):], args.defaults),
             *((a.arg, d) for a, d in zip(args.kwonlyargs, args.kw_defaults))]
    taken = {a.arg for a in args.args + args.kwonlyargs} & set(params)
    found = {}
    for k, node in given:
        if k not in params or node is None:  # None: a keyword-only parameter without a default
            continue
        try:
            value = ast.literal_eval(node)
        except (ValueError, TypeError, SyntaxError):
            raise LossSpecError(f"{name}: {key}()'s default {k}={ast.unparse(node)} is not a literal: a loss's "
                                "defaults must be literals (a number written out, e.g. 10.0), as tools read them "
                                "from the source text") from None
        off = "wrapper" in params[k] and value is None
        if not (off or isinstance(value, (int, float)) and not isinstance(value, bool)):
            raise LossSpecError(f"{name}: {key}()'s default {k}={ast.unparse(node)} is not a number: every loss "
                                "parameter is parsed as a float")
        found[k] = value
    if taken - set(found):
        k = sorted(taken - set(found))[0]
        raise LossSpecError(f"{name}: {key}() takes {k} without a default: every loss parameter of PARAMS needs a "
                            "literal default (the loss's default)")
    return found


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
