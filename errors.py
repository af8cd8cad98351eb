"""Bad input and failures as one line: the one place where an error ends a process (standard library only).

    Parser    argparse whose errors are one line naming the value, exit status 2 (no usage dump)
    Failure   what library code raises for an error found after parsing: its message is the line
    edge      a script's main runs under it (`@errors.edge()`): a Failure becomes its line and exit status
"""
import argparse
import contextlib
import re
import sys


class Parser(argparse.ArgumentParser):
    """Bad input: one line naming the value and what is allowed, exit status 2. An empty value
    ('--out ""') is bad input too, unless empty is the option's default: it would otherwise read as
    the default, or as the current folder."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # '-1e-4' and '-inf' are values, as '-4' is (argparse's own pattern knows only '-4' and '-.5')
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$|^-(inf|infinity|nan)$", re.I)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def parse_known_args(self, args=None, namespace=None):
        found, rest = super().parse_known_args(args, namespace)
        for action in self._actions:
            if action.option_strings and getattr(found, action.dest, None) == "" and action.default != "":
                self.error(f"{action.option_strings[0]} '' is not allowed (empty)")
        return found, rest


class Failure(Exception):
    """An error found after parsing: its one line (the message) and the exit status it ends a script
    with; 2 for bad input (the default), 1 for a failure, 3 for unavailable data, 130 interrupted."""

    def __init__(self, message, code=2):
        super().__init__(message)
        self.code = code


def one_line(kind, value, traceback, default=sys.excepthook):
    """An uncaught Failure (one raised on import: a mistake in catalog.py's tables) is its one line too."""
    if isinstance(value, Failure):
        print(f"error: {value}", file=sys.stderr)
    else:
        default(kind, value, traceback)


sys.excepthook = one_line


@contextlib.contextmanager
def edge():
    """A Failure raised anywhere below becomes `error: <message>` on stderr and the exit status."""
    try:
        yield
    except Failure as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(e.code) from None
