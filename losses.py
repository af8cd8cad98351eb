"""Partially Huberised losses (Menon et al., ICLR 2020) and the baselines they are compared with.

Multiclass losses take logits (N, C) and integer targets (N,), and come as functions and as
nn.Modules with torch's `reduction` in {'mean', 'sum', 'none'}:

    ce          -log p_y
    linear      1 - p_y                                   (unhinged; van Rooyen et al., 2015)
    gce         (1 - p_y^q) / q,  q in (0, 1]             (Zhang & Sabuncu, 2018)
    phuber_ce   -tau p_y + log tau + 1  if p_y <= 1/tau,  else -log p_y          (eq. 1, tau > 1)
    phuber_gce  GCE linearised where its slope in p exceeds tau, i.e. below p* = tau^(1/(q-1))
    sce         alpha CE + beta RCE, RCE = -A (1 - p_y), A = -4   (Wang et al., 2019)
    nce_rce     alpha NCE + beta RCE  (active-passive loss; Ma et al., 2020)

Drop one into your own loop:

    import losses
    criterion = losses.make_loss("phuber_ce", tau=10)    # or losses.PHuberCE(tau=10)
    loss = criterion(model(x), y)

Everything is computed from log_softmax in float32 or wider (float16/bfloat16 logits, e.g. under
autocast, are upcast), with torch.where over two finite branches, so values and gradients stay finite
for logits up to +-1e4 and nothing forces a host sync.

The registry (PARAMS and LOSSES, with each function's defaults) is the one source of the training
flags, run names and table keys: a new loss is a function, a module and a LOSSES entry here (see
docs/adding-a-loss.md). The binary margin losses of the synthetic experiments (logistic, huberised,
partially_huberised) live in margin_losses.py, torch-free, and are re-exported here.
"""
import inspect
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import registry
from margin_losses import (huberised, huberised_grad, huberised_threshold, logistic,  # noqa: F401 (re-exported)
                           logistic_grad, partially_huberised, partially_huberised_grad,
                           partially_huberised_threshold, sigmoid)

# Every parameter a loss can take: allowed interval, what it is (the --help text of its flag) and its
# symbol in tables. A literal, so that registry.py can read it without importing torch.
PARAMS = {
    "tau": {"range": "(1, inf)", "help": "partially Huberised threshold", "symbol": "τ", "tex": r"$\tau$"},
    "q": {"range": "(0, 1]", "help": "GCE exponent", "symbol": "q", "tex": "$q$"},
    "alpha": {"range": "(0, inf)", "help": "sce / nce_rce weight of the first term", "symbol": "α",
              "tex": r"$\alpha$"},
    "beta": {"range": "(0, inf)", "help": "sce / nce_rce weight of the RCE term", "symbol": "β",
             "tex": r"$\beta$"},
}

REDUCTIONS = ("mean", "sum", "none")


# ---------------------------------------------------------------------------------------------
# Parameter checks: each raises ValueError naming the bad value and what is allowed.

def check_param(name, value):
    """float(value) if it lies in PARAMS[name]'s interval, else ValueError naming it."""
    return registry.check(name, value, PARAMS[name]["range"])


def check_log_zero(A):
    """A, the value log 0 is clamped to in the reverse cross-entropy."""
    return registry.check("A", A, "(-inf, 0)")


def _check_reduction(reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is not allowed: use one of {', '.join(REDUCTIONS)}")
    return reduction


# ---------------------------------------------------------------------------------------------
# Multiclass losses (functional form).

def _checked(logits, targets):
    """Validate shapes/dtypes (metadata only, no host sync); return float32+ logits, int64 targets.

    float16/bfloat16 logits (e.g. under autocast) are upcast: the loss is always computed in at
    least float32, where exp/log of large logits neither overflow nor underflow to a NaN.
    """
    if not torch.is_tensor(logits) or logits.dim() != 2 or not logits.is_floating_point():
        raise ValueError(f"logits must be a floating-point tensor of shape (N, C), got "
                         f"{_describe(logits)}")
    if (not torch.is_tensor(targets) or targets.dim() != 1 or targets.is_floating_point()
            or targets.is_complex() or targets.dtype == torch.bool):
        raise ValueError(f"targets must be an integer tensor of shape (N,), got {_describe(targets)}")
    if targets.shape[0] != logits.shape[0]:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} disagree on N")
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return logits, targets.long()


def _log_probs(logits, targets):
    """log p (N, C) and log p_y (N,), validated and in float32 or wider."""
    logits, targets = _checked(logits, targets)
    log_p = F.log_softmax(logits, dim=1)
    return log_p, log_p.gather(1, targets.unsqueeze(1)).squeeze(1)


def _describe(x):
    return f"{x.dtype} of shape {tuple(x.shape)}" if torch.is_tensor(x) else type(x).__name__


def _reduce(loss, reduction):
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def ce(logits, targets, reduction="mean"):
    """Cross-entropy -log p_y (torch's fused kernel: the baseline should not pay for our checks)."""
    return F.cross_entropy(*_checked(logits, targets), reduction=_check_reduction(reduction))


def linear(logits, targets, reduction="mean"):
    """Linear (unhinged) loss 1 - p_y."""
    _check_reduction(reduction)
    return _reduce(1 - _log_probs(logits, targets)[1].exp(), reduction)


def gce(logits, targets, q=0.7, reduction="mean"):
    """Generalized cross-entropy (1 - p_y^q) / q; q = 1 is the linear loss, q -> 0 tends to CE."""
    q = check_param("q", q)
    _check_reduction(reduction)
    # -expm1(q log p) = 1 - p^q without cancellation when q log p is small (q -> 0 limit).
    return _reduce(-torch.expm1(q * _log_probs(logits, targets)[1]) / q, reduction)


def phuber_ce(logits, targets, tau=10.0, reduction="mean"):
    """Partially Huberised CE, eq. (1): -tau p + log tau + 1 where p <= 1/tau, else -log p."""
    tau = check_param("tau", tau)
    _check_reduction(reduction)
    log_p = _log_probs(logits, targets)[1]
    linearised = -tau * log_p.exp() + math.log(tau) + 1
    return _reduce(torch.where(log_p <= -math.log(tau), linearised, -log_p), reduction)


def phuber_gce_threshold(tau, q):
    """p* = tau^(1/(q-1)), where the GCE slope in p, -p^(q-1), reaches -tau (0 for q = 1)."""
    tau, q = check_param("tau", tau), check_param("q", q)
    return 0.0 if q == 1 else tau ** (1 / (q - 1))


def phuber_gce(logits, targets, tau=10.0, q=0.7, reduction="mean"):
    """Partially Huberised GCE: the tangent of (1 - p^q)/q at p* below p*, GCE above."""
    tau, q = check_param("tau", tau), check_param("q", q)
    _check_reduction(reduction)
    log_p = _log_probs(logits, targets)[1]
    # In log space the comparison is exact for q = 1 too (log p* = -inf: never linearised).
    log_p_star = math.log(tau) / (q - 1) if q < 1 else -math.inf
    p_star_q = math.exp(q * log_p_star)
    # Tangent at p*: (1 - p*^q)/q - tau (p - p*), and tau p* = p*^q because tau = p*^(q-1).
    linearised = -tau * log_p.exp() + p_star_q + (1 - p_star_q) / q
    base = -torch.expm1(q * log_p) / q
    return _reduce(torch.where(log_p <= log_p_star, linearised, base), reduction)


def sce(logits, targets, alpha=0.1, beta=1.0, A=-4.0, reduction="mean"):
    """Symmetric CE: alpha CE + beta RCE, with RCE = -A (1 - p_y) (log 0 clamped to A)."""
    alpha, beta, A = check_param("alpha", alpha), check_param("beta", beta), check_log_zero(A)
    _check_reduction(reduction)
    log_p = _log_probs(logits, targets)[1]
    return _reduce(-alpha * log_p - beta * A * (1 - log_p.exp()), reduction)


def nce_rce(logits, targets, alpha=1.0, beta=1.0, A=-4.0, reduction="mean"):
    """Active-passive loss alpha NCE + beta RCE, NCE = log p_y / sum_k log p_k (Ma et al., 2020)."""
    alpha, beta, A = check_param("alpha", alpha), check_param("beta", beta), check_log_zero(A)
    _check_reduction(reduction)
    log_p_all, log_p_y = _log_probs(logits, targets)
    nce = log_p_y / log_p_all.sum(dim=1)  # in (0, 1]; the sum is <= -C log C < 0 (never 0)
    return _reduce(alpha * nce - beta * A * (1 - log_p_y.exp()), reduction)


# ---------------------------------------------------------------------------------------------
# Module forms and the registry scripts build losses from (`--loss phuber_ce --tau 10`).

class _Loss(nn.Module):
    """nn.Module form of the functional loss `fn`; parameters not given take fn's defaults."""
    fn = None

    def __init__(self, reduction="mean", **params):
        super().__init__()
        name = self.fn.__name__
        self.reduction = _check_reduction(reduction)
        unknown = sorted(set(params) - set(loss_defaults(name)))
        if unknown:
            takes = ", ".join(loss_defaults(name)) or "no parameters"
            raise ValueError(f"loss {name!r} does not take {', '.join(unknown)}: it takes {takes} "
                             f"(all losses: {describe_losses()})")
        # validated values with defaults filled in: also what result files record
        self.params = {k: check_param(k, params.get(k, v)) for k, v in loss_defaults(name).items()}

    def forward(self, logits, targets):
        return type(self).fn(logits, targets, **self.params, reduction=self.reduction)

    def extra_repr(self):
        return ", ".join([f"{k}={v:g}" for k, v in self.params.items()] + [f"reduction={self.reduction!r}"])


class CrossEntropy(_Loss):
    fn = staticmethod(ce)


class Linear(_Loss):
    fn = staticmethod(linear)


class GCE(_Loss):
    """GCE(q=0.7)"""
    fn = staticmethod(gce)


class PHuberCE(_Loss):
    """PHuberCE(tau=10)"""
    fn = staticmethod(phuber_ce)


class PHuberGCE(_Loss):
    """PHuberGCE(tau=10, q=0.7)"""
    fn = staticmethod(phuber_gce)


class SCE(_Loss):
    """SCE(alpha=0.1, beta=1)"""
    fn = staticmethod(sce)


class NCERCE(_Loss):
    """NCERCE(alpha=1, beta=1)"""
    fn = staticmethod(nce_rce)


# The registry: each key names its function above, whose defaults are the loss's defaults.
LOSSES = {"ce": CrossEntropy, "linear": Linear, "gce": GCE, "phuber_ce": PHuberCE,
          "phuber_gce": PHuberGCE, "sce": SCE, "nce_rce": NCERCE}


def loss_defaults(name):
    """The registry parameters loss `name` takes, with their defaults, e.g. {'tau': 10.0, 'q': 0.7}."""
    _check_name(name)
    signature = inspect.signature(LOSSES[name].fn).parameters.values()
    return {p.name: p.default for p in signature if p.name in PARAMS}


def describe_losses():
    """One line listing every loss with the allowed range and default of each parameter."""
    return registry.describe({name: loss_defaults(name) for name in LOSSES}, PARAMS)


def _check_name(name):
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}: valid losses are {describe_losses()}")


def make_loss(name, reduction="mean", **params):
    """Build loss `name` from the registry; parameters given as None take the loss's default.

    Raises ValueError naming the bad value for an unknown name, a parameter the loss does not take
    (e.g. tau for ce), or a value outside its range.
    """
    _check_name(name)
    return LOSSES[name](reduction=reduction, **{k: v for k, v in params.items() if v is not None})
