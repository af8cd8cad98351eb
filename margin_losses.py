"""Binary margin losses of the synthetic experiments (report section 4), in numpy: no torch.

Each is a function of the margin z = y * score; with grad=True it returns (loss, dloss/dz), both from
the same intermediate arrays (an optimiser needs both at every point). partially_huberised is the
two-class phuber_ce on logits [0, z]. The end of the file is what both synthetic scripts share.
"""
import functools
import math

import numpy as np

from catalog import check_param
from results import check_writable


def logistic(z, grad=False):
    """log(1 + e^-z); with grad=True also its derivative -sigmoid(-z)."""
    z = np.asarray(z, dtype=float)
    value = np.logaddexp(0.0, -z)
    return (value, -np.exp(-np.logaddexp(0.0, z))) if grad else value


def huberised_threshold(tau):
    """Margin z0 below which |logistic'(z)| = sigmoid(-z) >= tau: z0 = log((1 - tau) / tau)."""
    tau = check_param("tau", tau, "(0, 1)")
    return math.log((1 - tau) / tau)


def huberised(z, tau, grad=False):
    """Huberised logistic loss, tau in (0, 1): the tangent of the logistic loss at z0 for z <= z0 (slope
    -tau), loss-level gradient clipping."""
    z, z0 = np.asarray(z, dtype=float), huberised_threshold(tau)
    value, slope = logistic(z, grad=True) if grad else (logistic(z), None)
    value = np.where(z <= z0, logistic(z0) - tau * (z - z0), value)
    return (value, np.where(z <= z0, -float(tau), slope)) if grad else value


def partially_huberised_threshold(tau):
    """Margin z0 = logit(1/tau) = -log(tau - 1): sigmoid(z) <= 1/tau exactly when z <= z0."""
    return -math.log(check_param("tau", tau, "(1, inf)") - 1)


def partially_huberised(z, tau, grad=False):
    """Partially Huberised logistic loss, tau > 1: -tau sigmoid(z) + log tau + 1 where sigmoid(z) <= 1/tau."""
    z, z0 = np.asarray(z, dtype=float), partially_huberised_threshold(tau)
    value, slope = logistic(z, grad=True) if grad else (logistic(z), None)
    p = np.exp(-value)  # sigmoid(z) = exp(-log(1 + e^-z)); the slope is -sigmoid(-z)
    linear = z <= z0
    value = np.where(linear, -tau * p + math.log(tau) + 1, value)
    return (value, np.where(linear, -tau * p * -slope, slope)) if grad else value


# ---------------------------------------------------------------------------------------------
# What both synthetic experiments compare: logistic, Huberised, partially Huberised.

MARGIN_LOSSES = ("logistic", "huberised", "partially_huberised")
LABELS = {"logistic": "Logistic", "huberised": "Huberised", "partially_huberised": "Partially Huberised"}
COLOURS = {"logistic": "tab:blue", "huberised": "tab:orange", "partially_huberised": "tab:green"}


def with_taus(tau_huber, tau_phuber):
    """{name: (tau, loss(z, grad=False))} for the three losses, tau bound (None for logistic)."""
    return {"logistic": (None, logistic),
            "huberised": (tau_huber, functools.partial(huberised, tau=tau_huber)),
            "partially_huberised": (tau_phuber, functools.partial(partially_huberised, tau=tau_phuber))}


def check_flags(parser, seed, tau_huber, tau_phuber, out):
    """The synthetic scripts' shared checks, before any work: parser.error (one line, exit 2)
    naming the bad flag."""
    if seed < 0:
        parser.error(f"--seed {seed} is not allowed: seeds are integers >= 0")
    try:
        check_writable(out)
    except ValueError as e:
        parser.error(f"--out {e}")
    try:
        huberised_threshold(tau_huber)
    except ValueError as e:
        misprint = " (the original paper's tau = 1.0 is a misprint)" if tau_huber == 1 else ""
        parser.error(f"--tau-huber {tau_huber:g}: {e} for the Huberised loss{misprint}")
    try:
        partially_huberised_threshold(tau_phuber)
    except ValueError as e:
        parser.error(f"--tau-phuber {tau_phuber:g}: {e}")
