"""Partially Huberised losses (Menon et al., ICLR 2020) and the baselines they are compared with.

Multiclass losses take logits (N, C) and integer targets (N,), and come as functions and as
nn.Modules with torch's `reduction` in {'mean', 'sum', 'none'}:

    ce          -log p_y
    linear      1 - p_y                                   (unhinged; van Rooyen et al., 2015)
    gce         (1 - p_y^q) / q,  q in (0, 1]             (Zhang & Sabuncu, 2018)
    phuber_ce   -tau p_y + log tau + 1  if p_y <= 1/tau,  else -log p_y          (eq. 1, tau > 1)
    phuber_gce  GCE linearised where its slope in p exceeds tau, i.e. below p* = tau^(1/(q-1))
    sce         alpha CE + beta RCE, RCE = -A (1 - p_y)   (Wang et al., 2019)
    nce_rce     alpha NCE + beta RCE  (active-passive loss; Ma et al., 2020)

RCE's A is the value log 0 takes in -sum_k p_k log onehot_k. Its default is the official codes' log(1e-4),
from the one-hot target they clamp at 1e-4 (docs/peer-losses.md); the papers state A = -4 (pass A=-4).

Drop one into your own loop:

    import losses
    criterion = losses.make_loss("phuber_ce", tau=10)    # or losses.PHuberCE(tau=10)
    loss = criterion(model(x), y)

Everything is computed from log_softmax in float32 or wider (float16/bfloat16 logits, e.g. under
autocast, are upcast), with torch.where over two finite branches, so values and gradients stay finite
for logits up to +-1e4 and nothing forces a host sync.

The registry LOSSES below, with each function's defaults, builds the losses; catalog.py lists the
same parameters and defaults as literal tables for the tools that never import torch (training flags,
run names, table keys), and test_catalog.py checks that the two agree: a new loss is a function, a
module and a LOSSES entry here, and its line in catalog.LOSSES (docs/adding-a-loss.md). The binary margin losses of the synthetic experiments (logistic, huberised,
partially_huberised) live in margin_losses.py, torch-free.
"""
import inspect
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from catalog import PARAMS, check_param, describe_losses  # the parameter table, torch-free (catalog.py)

REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is not allowed: use one of {', '.join(REDUCTIONS)}")
    return reduction


# ---------------------------------------------------------------------------------------------
# Multiclass losses (functional form).

def _checked(logits, targets, check_targets=True, logit_clip=None):
    """Validate shapes and dtypes; return float32+ logits (clipped with clip_logits if logit_clip is
    set), int64 targets.

    float16/bfloat16 logits (e.g. under autocast) are upcast: the loss is always computed in at
    least float32, where exp/log of large logits neither overflow nor underflow to a NaN.
    With check_targets, targets outside [0, C) raise (torch's cross_entropy would silently skip
    -100, its ignore_index): that reads two numbers from the device, a host sync, so the training
    loop turns it off and checks the dataset's labels once instead (data.load_dataset).
    """
    if not torch.is_tensor(logits) or logits.dim() != 2 or not logits.is_floating_point():
        raise ValueError(f"logits must be a floating-point tensor of shape (N, C), got "
                         f"{_describe(logits)}")
    if (not torch.is_tensor(targets) or targets.dim() != 1 or targets.is_floating_point()
            or targets.is_complex() or targets.dtype == torch.bool):
        raise ValueError(f"targets must be an integer tensor of shape (N,), got {_describe(targets)}")
    if targets.shape[0] != logits.shape[0]:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} disagree on N")
    if check_targets:
        check_targets_in_range(targets, logits.shape[1])
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    if logit_clip is not None:
        logits = clip_logits(logits, logit_clip)
    return logits, targets.long()


def clip_logits(logits, delta):
    """LogitClip (Wei et al., ICML 2023): each row of `logits` whose L2 norm exceeds delta is scaled to
    norm delta; shorter rows are unchanged. Any loss applied after it is bounded (docs/logitclip.md).

    The scale is delta / max(norm, delta): no division by a zero norm and no gradient through the
    norm of an unclipped row. float16/bfloat16 rows are clipped in float32, where the squares of
    logits up to 1e4 do not overflow.
    """
    delta = check_param("logit_clip", delta)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    norms = torch.linalg.vector_norm(logits, dim=1, keepdim=True)
    return logits * (delta / torch.clamp(norms, min=delta))


def check_targets_in_range(targets, num_classes):
    """ValueError unless every target is a class index in [0, num_classes) (reads two values)."""
    if targets.numel():
        low, high = int(targets.min()), int(targets.max())
        if low < 0 or high >= num_classes:
            raise ValueError(f"targets must be class indices in [0, {num_classes}), got values from {low} to {high}")


def _log_probs(logits, targets, check_targets=True, logit_clip=None):
    """log p (N, C) and log p_y (N,), validated and in float32 or wider."""
    logits, targets = _checked(logits, targets, check_targets, logit_clip)
    log_p = F.log_softmax(logits, dim=1)
    return log_p, log_p.gather(1, targets.unsqueeze(1)).squeeze(1)


def _describe(x):
    return f"{x.dtype} of shape {tuple(x.shape)}" if torch.is_tensor(x) else type(x).__name__


def _one_minus_power_over_q(log_p, q):
    """(1 - p^q) / q from log p, stable for any q in (0, 1]: it is -log p * exprel(q log p) with
    exprel(x) = expm1(x) / x. Neither 1 - p^q (which cancels for small q) nor a tiny q log p (which
    underflows in float32) loses it: the q -> 0 limit is -log p, CE. Below |x| = 1e-5 exprel is its
    series 1 + x/2 + x^2/6 (the next term, x^3/24, is under float64's rounding), whose gradient
    stays finite where that of expm1(x) / x would divide by an underflowing x^2."""
    x = q * log_p
    if not torch.is_tensor(x):
        return -log_p * (1 + x / 2 + x * x / 6 if abs(x) < 1e-5 else math.expm1(x) / x)
    small = x.abs() < 1e-5
    safe = torch.where(small, torch.ones_like(x), x)  # no 0/0 in the branch torch.where discards
    return -log_p * torch.where(small, 1 + x / 2 + x * x / 6, torch.expm1(safe) / safe)


def _reduce(loss, reduction):
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def ce(logits, targets, *, logit_clip=None, reduction="mean", check_targets=True):
    """Cross-entropy -log p_y (torch's fused kernel: the baseline should not pay for our checks)."""
    return F.cross_entropy(*_checked(logits, targets, check_targets, logit_clip), reduction=_check_reduction(reduction))


def linear(logits, targets, *, logit_clip=None, reduction="mean", check_targets=True):
    """Linear (unhinged) loss 1 - p_y."""
    _check_reduction(reduction)
    return _reduce(1 - _log_probs(logits, targets, check_targets, logit_clip)[1].exp(), reduction)


def gce(logits, targets, *, q=0.7, logit_clip=None, reduction="mean", check_targets=True):
    """Generalized cross-entropy (1 - p_y^q) / q; q = 1 is the linear loss, q -> 0 tends to CE."""
    q = check_param("q", q)
    _check_reduction(reduction)
    return _reduce(_one_minus_power_over_q(_log_probs(logits, targets, check_targets, logit_clip)[1], q), reduction)


def phuber_ce(logits, targets, *, tau=10.0, logit_clip=None, reduction="mean", check_targets=True):
    """Partially Huberised CE, eq. (1): -tau p + log tau + 1 where p <= 1/tau, else -log p."""
    tau = check_param("tau", tau)
    _check_reduction(reduction)
    log_p = _log_probs(logits, targets, check_targets, logit_clip)[1]
    linearised = -tau * log_p.exp() + math.log(tau) + 1
    return _reduce(torch.where(log_p <= -math.log(tau), linearised, -log_p), reduction)


def phuber_gce_threshold(tau, q):
    """p* = tau^(1/(q-1)), where the GCE slope in p, -p^(q-1), reaches -tau (0 for q = 1)."""
    tau, q = check_param("tau", tau), check_param("q", q)
    return 0.0 if q == 1 else tau ** (1 / (q - 1))


def phuber_gce(logits, targets, *, tau=10.0, q=0.7, logit_clip=None, reduction="mean", check_targets=True):
    """Partially Huberised GCE: the tangent of (1 - p^q)/q at p* below p*, GCE above."""
    tau, q = check_param("tau", tau), check_param("q", q)
    _check_reduction(reduction)
    log_p = _log_probs(logits, targets, check_targets, logit_clip)[1]
    if q == 1:  # GCE is then linear, its slope -1 > -tau everywhere: never linearised
        return _reduce(_one_minus_power_over_q(log_p, q), reduction)
    # In log space: log p* = log(tau) / (q - 1). Tangent at p*: (1 - p*^q)/q - tau (p - p*), where
    # tau p* = p*^q because tau = p*^(q-1).
    log_p_star = math.log(tau) / (q - 1)
    linearised = -tau * log_p.exp() + math.exp(q * log_p_star) + _one_minus_power_over_q(log_p_star, q)
    return _reduce(torch.where(log_p <= log_p_star, linearised, _one_minus_power_over_q(log_p, q)), reduction)


# RCE's default A: log(1e-4). HanxunH/Active-Passive-Losses loss.py (SCELoss, ReverseCrossEntropy) and
# YisenWang/symmetric_cross_entropy_for_noisy_labels loss.py clamp the one-hot target at 1e-4.
def sce(logits, targets, *, alpha=0.1, beta=1.0, A=math.log(1e-4), logit_clip=None, reduction="mean",
        check_targets=True):
    """Symmetric CE: alpha CE + beta RCE, with RCE = -A (1 - p_y) (log 0 taken as A)."""
    alpha, beta, A = check_param("alpha", alpha), check_param("beta", beta), check_param("A", A)
    _check_reduction(reduction)
    log_p = _log_probs(logits, targets, check_targets, logit_clip)[1]
    return _reduce(-alpha * log_p - beta * A * (1 - log_p.exp()), reduction)


def nce_rce(logits, targets, *, alpha=1.0, beta=1.0, A=math.log(1e-4), logit_clip=None, reduction="mean",
            check_targets=True):
    """Active-passive loss alpha NCE + beta RCE, NCE = log p_y / sum_k log p_k (Ma et al., 2020)."""
    alpha, beta, A = check_param("alpha", alpha), check_param("beta", beta), check_param("A", A)
    _check_reduction(reduction)
    log_p_all, log_p_y = _log_probs(logits, targets, check_targets, logit_clip)
    nce = log_p_y / log_p_all.sum(dim=1)  # in (0, 1]; the sum is <= -C log C < 0 (never 0)
    return _reduce(alpha * nce - beta * A * (1 - log_p_y.exp()), reduction)


# ---------------------------------------------------------------------------------------------
# Module forms and the registry scripts build losses from (`--loss phuber_ce --tau 10`).

class _Loss(nn.Module):
    """nn.Module form of the functional loss `fn`; parameters not given take fn's defaults.
    check_targets=False skips the per-call target range check (and its host sync)."""
    fn = None

    def __init__(self, reduction="mean", check_targets=True, **params):
        super().__init__()
        name = self.fn.__name__
        self.reduction = _check_reduction(reduction)
        self.check_targets = check_targets
        unknown = sorted(set(params) - set(loss_defaults(name)))
        if unknown:
            takes = ", ".join(loss_defaults(name)) or "no parameters"
            raise ValueError(f"loss {name!r} does not take {', '.join(unknown)}: it takes {takes} "
                             f"(all losses: {describe_losses()})")
        # validated values with defaults filled in (a wrapper left off, None, is left out)
        self.params = {k: check_param(k, value) for k, v in loss_defaults(name).items()
                       if (value := params.get(k, v)) is not None}

    def forward(self, logits, targets):
        return type(self).fn(logits, targets, **self.params, reduction=self.reduction,
                             check_targets=self.check_targets)

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


# The registry: each key is the name of its function above, whose defaults
# are the loss's defaults.
LOSSES = {"ce": CrossEntropy, "linear": Linear, "gce": GCE, "phuber_ce": PHuberCE,
          "phuber_gce": PHuberGCE, "sce": SCE, "nce_rce": NCERCE}


def loss_defaults(name):
    """The registry parameters loss `name` takes, with their defaults, e.g. {'tau': 10.0, 'q': 0.7,
    'logit_clip': None}: its function's signature (catalog.LOSSES lists the same, without torch)."""
    _check_name(name)
    return {k: p.default for k, p in inspect.signature(LOSSES[name].fn).parameters.items() if k in PARAMS}


def _check_name(name):
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}: valid losses are {describe_losses()}")


def make_loss(name, reduction="mean", check_targets=True, **params):
    """Build loss `name` from the registry; parameters given as None take the loss's default.

    Raises ValueError naming the bad value for an unknown name, a parameter the loss does not take
    (e.g. tau for ce), or a value outside its range.
    """
    _check_name(name)
    return LOSSES[name](reduction=reduction, check_targets=check_targets,
                        **{k: v for k, v in params.items() if v is not None})
