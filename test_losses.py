"""Tests for losses.py: every loss against an independent float64 closed form, gradcheck, continuity
at the linearisation points, limits, extreme logits, low precision, reductions and bad input."""
import ast
import math
import os
import sys
from decimal import Decimal, getcontext

import numpy as np
import pytest
import torch

import catalog
import losses
import margin_losses

MULTICLASS = list(losses.LOSSES)
HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One CPU thread: these tensors are tiny, and two threads' hand-offs cost more than they save (far more
    when `make test`'s two streams share two cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# Independent reference: numpy float64, written from the papers' definitions, not from losses.py.

def softmax64(logits):
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def reference(name, logits, targets, tau=10.0, q=0.7, alpha=None, beta=None, A=None, logit_clip=None):
    if logit_clip is not None:  # LogitClip: rows longer than delta scaled to norm delta
        norms = np.linalg.norm(np.asarray(logits, dtype=np.float64), axis=1, keepdims=True)
        logits = logits * np.minimum(1.0, logit_clip / norms)
    p_all = softmax64(logits)
    p = p_all[np.arange(len(targets)), targets]
    if name == "ce":
        return -np.log(p)
    if name == "linear":
        return 1 - p
    if name == "gce":
        return (1 - p ** q) / q
    if name == "phuber_ce":
        return np.where(p <= 1 / tau, -tau * p + np.log(tau) + 1, -np.log(p))
    if name == "phuber_gce":
        base = lambda v: (1 - v ** q) / q               # noqa: E731
        slope = lambda v: -v ** (q - 1)                 # noqa: E731
        p_star = tau ** (1 / (q - 1))                   # where |slope| = tau
        return np.where(p <= p_star, base(p_star) + slope(p_star) * (p - p_star), base(p))
    one_hot = np.eye(p_all.shape[1])[targets]
    log_label = np.where(one_hot > 0, 0.0, A)           # log of the one-hot label, log 0 := A
    rce = -(p_all * log_label).sum(axis=1)
    if name == "sce":
        return alpha * -np.log(p) + beta * rce
    if name == "nce_rce":
        nce = -np.log(p) / -np.log(p_all).sum(axis=1)
        return alpha * nce + beta * rce
    raise KeyError(name)


def default_params(name):
    return losses.loss_defaults(name)


def random_batch(n=400, c=10, scale=3.0, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(n, c, generator=g, dtype=dtype)
    targets = torch.randint(0, c, (n,), generator=g)
    return logits, targets


def p_target(logits, targets):
    return torch.softmax(logits.double(), 1)[torch.arange(len(targets)), targets]


def threshold(name, params):
    """Probability below which the loss is linearised (None: single branch)."""
    if name == "phuber_ce":
        return 1 / params["tau"]
    if name == "phuber_gce":
        return losses.phuber_gce_threshold(params["tau"], params["q"])
    return None


# ---------------------------------------------------------------------------------------------
# Values and gradients.

# Every loss is also tested behind LogitClip (logit_clip = delta): the same tests, clipped logits.
CLIPS = [None, 9.0]  # random_batch's rows have norms about 3 sqrt(10) = 9.5: delta 9 clips about half


def clipped_logits(logits, delta):
    return logits if delta is None else torch.as_tensor(reference_clip(logits.detach().numpy(), delta))


def reference_clip(logits, delta):
    return logits * np.minimum(1.0, delta / np.linalg.norm(logits.astype(np.float64), axis=1, keepdims=True))


@pytest.mark.parametrize("name", MULTICLASS)
@pytest.mark.parametrize("clip", CLIPS)
@pytest.mark.parametrize("params", [{}, {"tau": 3.0}, {"tau": 50.0, "q": 0.4}, {"q": 0.2}])
def test_matches_independent_closed_form(name, params, clip):
    params = {k: v for k, v in params.items() if k in default_params(name)}
    full = {**default_params(name), **params, "logit_clip": clip}
    logits, targets = random_batch(scale=3.0 if clip is None else 30.0)  # clipped rows land on norm 9: both branches
    ours = losses.make_loss(name, reduction="none", **params, logit_clip=clip)(logits, targets)
    ref = reference(name, logits.numpy(), targets.numpy(), **full)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-10, atol=1e-12)
    seen = clipped_logits(logits, clip)
    t = threshold(name, full)
    if t is not None:  # the inputs must exercise both branches, or the test proves half a loss
        p = p_target(seen, targets)
        assert (p <= t).sum() >= 10 and (p > t).sum() >= 10
    if clip is not None:  # and the clipping must change the value, or LogitClip is not tested
        unclipped = reference(name, logits.numpy(), targets.numpy(), **{**full, "logit_clip": None})
        assert np.abs(ref - unclipped).max() > 1e-3


def test_logit_clip_closed_form_by_hand():
    # (3, 4) has norm 5: clipped to norm 1 it is (0.6, 0.8), and CE of class 0 is log(1 + e^0.2)
    logits, targets = torch.tensor([[3.0, 4.0], [0.3, 0.4]], dtype=torch.float64), torch.tensor([0, 0])
    value = losses.ce(logits, targets, logit_clip=1.0, reduction="none")
    assert value[0].item() == pytest.approx(math.log(1 + math.exp(0.2)), rel=1e-12)
    assert value[1].item() == pytest.approx(math.log(1 + math.exp(0.1)), rel=1e-12)  # norm 0.5: unchanged
    assert torch.linalg.vector_norm(losses.clip_logits(logits, 1.0), dim=1).tolist() == pytest.approx([1.0, 0.5])


@pytest.mark.parametrize("name", MULTICLASS)
def test_logit_clip_leaves_the_loss_unchanged_below_delta(name):
    logits, targets = random_batch(n=50)
    largest = torch.linalg.vector_norm(logits, dim=1).max().item()
    for delta in (largest, 10 * largest):  # a row exactly at delta is not changed either
        assert torch.equal(losses.make_loss(name, logit_clip=delta, reduction="none")(logits, targets),
                           losses.make_loss(name, reduction="none")(logits, targets))


@pytest.mark.parametrize("delta", [0, -1.0, 1e-320, 1e39, float("nan"), float("inf"), "1"])
def test_logit_clip_rejects_bad_delta(delta):
    with pytest.raises(ValueError, match=r"logit_clip=.* must be a number in \[1e-06, 1e\+06\]"):
        losses.make_loss("ce", logit_clip=delta)
    with pytest.raises(ValueError, match="logit_clip="):
        losses.clip_logits(torch.zeros(2, 3), delta)


def test_logit_clip_of_a_zero_row_has_a_finite_gradient():
    logits = torch.zeros(3, 4, dtype=torch.float64, requires_grad=True)
    losses.ce(logits, torch.tensor([0, 1, 2]), logit_clip=1.0).backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("name", MULTICLASS)
@pytest.mark.parametrize("clip", CLIPS)
def test_gradcheck_both_branches(name, clip):
    logits, targets = random_batch(n=24, c=5, scale=10.0, seed=1)
    if clip is not None:  # both clipped (norm 15 or more) and unclipped rows, away from norm = delta
        clip = 15.0
        norms = torch.linalg.vector_norm(logits, dim=1)
        keep = (norms - clip).abs() > 1e-3
        logits, targets = logits[keep], targets[keep]
        assert (norms[keep] > clip).any() and (norms[keep] < clip).any()
    t = threshold(name, default_params(name))
    if t is not None:
        p = p_target(clipped_logits(logits, clip), targets)
        # keep gradcheck's finite differences away from the kink itself
        away = (p.log() - math.log(t)).abs() > 1e-3
        logits, targets = logits[away], targets[away]
        p = p_target(clipped_logits(logits, clip), targets)
        assert (p <= t).any() and (p > t).any()
    logits.requires_grad_(True)
    fn = losses.make_loss(name, reduction="none", logit_clip=clip)
    assert torch.autograd.gradcheck(lambda x: fn(x, targets), (logits,))


@pytest.mark.parametrize("name", MULTICLASS)
@pytest.mark.parametrize("clip", CLIPS)
def test_functional_and_module_agree(name, clip):
    logits, targets = random_batch(n=50)
    fn = getattr(losses, name)
    module = losses.make_loss(name, logit_clip=clip)
    assert torch.equal(fn(logits, targets, **{**default_params(name), "logit_clip": clip}), module(logits, targets))
    assert isinstance(module, torch.nn.Module)


# ---------------------------------------------------------------------------------------------
# Continuity at the linearisation point, in value and first derivative.

def two_class_at_probability(p, dtype=torch.float64):
    """Logits [0, z] with target 1, so p_1 = sigmoid(z) = p."""
    z = math.log(p / (1 - p))
    return torch.tensor([[0.0, z]], dtype=dtype, requires_grad=True), torch.tensor([1])


def value_and_slope(name, p, **params):
    logits, targets = two_class_at_probability(p)
    value = losses.make_loss(name, reduction="sum", **params)(logits, targets)
    (grad,) = torch.autograd.grad(value, logits)
    return value.item(), grad[0, 1].item()


@pytest.mark.parametrize("name,params", [("phuber_ce", {"tau": 10.0}), ("phuber_ce", {"tau": 1.5}),
                                         ("phuber_gce", {"tau": 10.0, "q": 0.7}),
                                         ("phuber_gce", {"tau": 2.0, "q": 0.3})])
def test_continuous_at_linearisation_point(name, params):
    t = threshold(name, params)
    eps = 1e-9
    below, above = value_and_slope(name, t - eps, **params), value_and_slope(name, t + eps, **params)
    assert below[0] == pytest.approx(above[0], abs=1e-7)
    assert below[1] == pytest.approx(above[1], abs=1e-7)
    # and the slope in p on the linear side is exactly -tau (this is what clipping means)
    p = t / 2
    logits, targets = two_class_at_probability(p)
    value = losses.make_loss(name, reduction="sum", **params)(logits, targets)
    (grad,) = torch.autograd.grad(value, logits)
    dp_dz = p * (1 - p)
    assert grad[0, 1].item() / dp_dz == pytest.approx(-params["tau"], rel=1e-9)


def slope(loss, z, tau=None):
    """d loss / dz as the loss computes it with grad=True (what the synthetic experiments' optimiser uses)."""
    return (loss(z, grad=True) if tau is None else loss(z, tau, grad=True))[1]


@pytest.mark.parametrize("loss,tau", [
    (margin_losses.huberised, 1 / (1 + math.e)),
    (margin_losses.huberised, 0.1),
    (margin_losses.partially_huberised, 1 + math.exp(-1)),
    (margin_losses.partially_huberised, 1.1),
])
def test_binary_losses_continuous_at_boundary(loss, tau):
    z0 = (margin_losses.huberised_threshold(tau) if loss is margin_losses.huberised
          else margin_losses.partially_huberised_threshold(tau))
    z = np.array([z0 - 1e-9, z0 + 1e-9])
    assert abs(np.diff(loss(z, tau))[0]) < 1e-8
    assert abs(np.diff(slope(loss, z, tau))[0]) < 1e-8
    # the linear branch really is taken below z0 and the logistic one above
    assert loss(z0 - 1.0, tau) != pytest.approx(margin_losses.logistic(z0 - 1.0))
    assert loss(z0 + 1.0, tau) == pytest.approx(margin_losses.logistic(z0 + 1.0))


def test_binary_thresholds_of_the_paper():
    # tau = sigmoid(-1) (Huberised) and 1 + e^-1 (partially Huberised) both switch at z = 1
    assert margin_losses.huberised_threshold(1 / (1 + math.e)) == pytest.approx(1.0)
    assert margin_losses.partially_huberised_threshold(1 + math.exp(-1)) == pytest.approx(1.0)
    # partially Huberised: linear in p = sigmoid(z) for p <= 1/tau
    tau = 1.1
    z = np.linspace(-5, 5, 101)
    p = 1 / (1 + np.exp(-z))
    expected = np.where(p <= 1 / tau, -tau * p + np.log(tau) + 1, np.log1p(np.exp(-z)))
    np.testing.assert_allclose(margin_losses.partially_huberised(z, tau), expected, rtol=1e-12)
    # Huberised: linear with slope -tau where |logistic'(z)| >= tau
    tau = 0.1
    slope = 1 / (1 + np.exp(z))
    z0 = np.log((1 - tau) / tau)
    expected = np.where(slope >= tau, np.log1p(np.exp(-z0)) - tau * (z - z0), np.log1p(np.exp(-z)))
    np.testing.assert_allclose(margin_losses.huberised(z, tau), expected, rtol=1e-12)


@pytest.mark.parametrize("loss,tau", [
    (margin_losses.logistic, None),
    (margin_losses.huberised, 0.1),
    (margin_losses.huberised, 1 / (1 + math.e)),
    (margin_losses.partially_huberised, 1.1),
    (margin_losses.partially_huberised, 1 + math.exp(-1)),
])
def test_binary_gradients_match_finite_differences(loss, tau):
    z = np.linspace(-8, 8, 161) + 0.013  # both branches, never exactly on a kink
    h = 1e-6
    value = (lambda z: loss(z)) if tau is None else (lambda z: loss(z, tau))  # noqa: E731
    numeric = (value(z + h) - value(z - h)) / (2 * h)
    np.testing.assert_allclose(slope(loss, z, tau), numeric, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(loss(z, grad=True)[0] if tau is None else loss(z, tau, grad=True)[0], value(z))


def test_binary_losses_are_finite_for_huge_margins():
    z = np.array([-1e4, -700.0, 0.0, 700.0, 1e4])
    for values in (margin_losses.logistic(z), slope(margin_losses.logistic, z), margin_losses.huberised(z, 0.2),
                   slope(margin_losses.huberised, z, 0.2), margin_losses.partially_huberised(z, 2.0),
                   slope(margin_losses.partially_huberised, z, 2.0)):
        assert np.isfinite(values).all()


# ---------------------------------------------------------------------------------------------
# Limits and equivalences.

def test_phuber_ce_tends_to_linear_as_tau_to_one():
    logits, targets = random_batch()
    linear = losses.linear(logits, targets, reduction="none")
    gaps = [(losses.phuber_ce(logits, targets, tau=1 + d, reduction="none") - linear).abs().max().item()
            for d in (1e-1, 1e-3, 1e-6)]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-4


def test_phuber_ce_equals_ce_when_no_probability_is_below_threshold():
    logits, targets = random_batch(scale=1.0)
    tau = 1e6
    assert (p_target(logits, targets) > 1 / tau).all()
    assert torch.equal(losses.phuber_ce(logits, targets, tau=tau, reduction="none"),
                       losses.ce(logits, targets, reduction="none"))


def test_gce_limits():
    logits, targets = random_batch(scale=1.0)
    torch.testing.assert_close(losses.gce(logits, targets, q=1.0), losses.linear(logits, targets),
                               rtol=1e-12, atol=1e-12)
    ce = losses.ce(logits, targets, reduction="none")
    gaps = [(losses.gce(logits, targets, q=q, reduction="none") - ce).abs().max().item()
            for q in (1e-1, 1e-3, 1e-6)]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-4


def test_phuber_gce_with_q_one_is_linear():
    logits, targets = random_batch()
    torch.testing.assert_close(losses.phuber_gce(logits, targets, tau=5.0, q=1.0),
                               losses.linear(logits, targets), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("tau", [1.1, 1 + math.exp(-1), 2.0, 10.0])
def test_binary_partially_huberised_is_two_class_phuber_ce(tau):
    z = torch.linspace(-6, 6, 121, dtype=torch.float64)
    logits = torch.stack([torch.zeros_like(z), z], 1)
    targets = torch.ones(len(z), dtype=torch.long)
    multiclass = losses.phuber_ce(logits, targets, tau=tau, reduction="none").numpy()
    np.testing.assert_allclose(margin_losses.partially_huberised(z.numpy(), tau), multiclass, rtol=1e-10, atol=1e-12)
    binary_ce = losses.ce(logits, targets, reduction="none").numpy()
    np.testing.assert_allclose(margin_losses.logistic(z.numpy()), binary_ce, rtol=1e-10, atol=1e-12)


def test_sce_and_nce_rce_parts():
    logits, targets = random_batch()
    p = p_target(logits, targets)
    rce = 4 * (1 - p)  # the papers' A = -4, one keyword away
    torch.testing.assert_close(losses.sce(logits, targets, alpha=1.0, beta=2.0, A=-4, reduction="none"),
                               losses.ce(logits, targets, reduction="none") + 2 * rce)
    torch.testing.assert_close(losses.make_loss("nce_rce", alpha=1e-12, A=-4.0, reduction="none")(logits, targets), rce)
    # NCE is a normalised loss: in (0, 1], and 1 / C at the uniform prediction
    nce = losses.nce_rce(logits, targets, alpha=1.0, beta=1e-12, reduction="none")
    assert ((nce > 0) & (nce <= 1)).all()
    uniform = losses.nce_rce(torch.zeros(3, 7, dtype=torch.float64), torch.tensor([0, 3, 6]),
                             alpha=1.0, beta=1e-12, reduction="none")
    torch.testing.assert_close(uniform, torch.full((3,), 1 / 7, dtype=torch.float64))


def official_peer_loss(name, logits, targets, alpha, beta):
    """SCE and NCE+RCE per sample as their official code computes them, in numpy float64, from
    HanxunH/Active-Passive-Losses loss.py (SCELoss; NCEandRCE = NormalizedCrossEntropy +
    ReverseCrossEntropy): CE and NCE from log_softmax; RCE = -sum_k clamp(p_k, 1e-7, 1) *
    log(clamp(onehot_k, 1e-4, 1))."""
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    one_hot = np.eye(logits.shape[1])[targets]
    rce = -(np.clip(np.exp(log_p), 1e-7, 1.0) * np.log(np.clip(one_hot, 1e-4, 1.0))).sum(axis=1)
    ce = -(one_hot * log_p).sum(axis=1)
    first = ce if name == "sce" else ce / -log_p.sum(axis=1)
    return alpha * first + beta * rce


@pytest.mark.parametrize("name", ["sce", "nce_rce"])
@pytest.mark.parametrize("c", [10, 100])
def test_sce_and_nce_rce_at_their_defaults_match_the_official_code(name, c):
    g = np.random.default_rng(c)
    logits = g.uniform(-50, 50, (300, c))  # rows from uniform to saturated: p_k from ~1/C to below 1e-40
    logits[:100] *= 0.01                   # ... and rows where no p_k falls under the official 1e-7 clamp
    targets = g.integers(0, c, 300)
    defaults = losses.loss_defaults(name)
    ours = losses.make_loss(name, reduction="none")(torch.as_tensor(logits), torch.as_tensor(targets)).numpy()
    theirs = official_peer_loss(name, logits, targets, defaults["alpha"], defaults["beta"])
    # The one difference is their probability clamp, which lifts each p_k below 1e-7 (k != y) to 1e-7 in RCE:
    # at most beta |log 1e-4| (C - 1) 1e-7 per sample (9e-6 at C = 10, 9e-5 at C = 100).
    p = softmax64(logits)
    lifted = (np.maximum(p, 1e-7) - p)
    lifted[np.arange(len(targets)), targets] = 0.0
    clamp = defaults["beta"] * -math.log(1e-4) * lifted.sum(axis=1)
    assert (clamp[:100] == 0).all() and (clamp[100:] > 0).sum() > 100  # both kinds of rows are there
    np.testing.assert_allclose(ours + clamp, theirs, rtol=1e-12, atol=1e-12)
    assert np.abs(ours - theirs).max() <= defaults["beta"] * -math.log(1e-4) * (c - 1) * 1e-7 + 1e-12


def test_the_default_rce_constant_is_log_of_the_official_clamp():
    # math.log(1e-4) in losses.py's signatures, its value written out in catalog.py's torch-free table
    for name in ("sce", "nce_rce"):
        assert losses.loss_defaults(name)["A"] == catalog.LOSSES[name]["A"] == math.log(1e-4)


# ---------------------------------------------------------------------------------------------
# Numerics: extreme logits and low precision.

def extreme_batch(c=100, dtype=torch.float32):
    logits = torch.full((6, c), -1e4, dtype=dtype)
    logits[0, 0] = 1e4                       # one-hot-like, target is the winner: p = 1
    logits[1, 1] = 1e4                       # one-hot-like, target loses by 2e4: p = exp(-2e4)
    logits[2] = torch.linspace(-1e4, 1e4, c)
    logits[3] = 1e4                          # all equal and huge: p = 1/C
    logits[4] = torch.linspace(1e4, -1e4, c)
    logits[5, ::2] = 1e4
    targets = torch.tensor([0, 0, 0, 5, c - 1, 1])
    return logits, targets


@pytest.mark.parametrize("name", MULTICLASS)
@pytest.mark.parametrize("clip", [None, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_extreme_logits_finite(name, dtype, clip):
    logits, targets = extreme_batch(dtype=dtype)
    logits.requires_grad_(True)
    for reduction in ("none", "mean"):
        value = losses.make_loss(name, reduction=reduction, logit_clip=clip)(logits, targets)
        assert value.dtype == torch.float32  # computed in float32 whatever the input precision
        assert torch.isfinite(value).all(), (name, dtype, value)
        (grad,) = torch.autograd.grad(value.sum(), logits)
        assert grad.dtype == dtype and torch.isfinite(grad).all(), (name, dtype)


@pytest.mark.parametrize("name", MULTICLASS)
@pytest.mark.parametrize("clip", CLIPS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_under_autocast(name, dtype, clip):
    torch.manual_seed(0)
    model = torch.nn.Linear(20, 10)
    x = 100 * torch.randn(64, 20)
    targets = torch.randint(0, 10, (64,))
    with torch.autocast("cpu", dtype=dtype):
        logits = model(x)
        assert logits.dtype == dtype
        value = losses.make_loss(name, logit_clip=clip)(logits, targets)
    value.backward()
    assert value.dtype == torch.float32 and torch.isfinite(value)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    # close to the float32 value of the same logits
    assert value.item() == pytest.approx(losses.make_loss(name, logit_clip=clip)(logits.float(), targets).item(),
                                         rel=1e-5)


# ---------------------------------------------------------------------------------------------
# Reductions, shapes, dtypes, parameters, registry.

@pytest.mark.parametrize("name", MULTICLASS)
@pytest.mark.parametrize("clip", CLIPS)
def test_reductions(name, clip):
    logits, targets = random_batch(n=30)
    none = losses.make_loss(name, reduction="none", logit_clip=clip)(logits, targets)
    assert none.shape == (30,)
    torch.testing.assert_close(losses.make_loss(name, reduction="mean", logit_clip=clip)(logits, targets), none.mean())
    torch.testing.assert_close(losses.make_loss(name, reduction="sum", logit_clip=clip)(logits, targets), none.sum())
    with pytest.raises(ValueError, match="'avg'"):
        losses.make_loss(name, reduction="avg")
    with pytest.raises(ValueError, match="'avg'"):
        getattr(losses, name)(logits, targets, reduction="avg")


@pytest.mark.parametrize("logits,targets,match", [
    (torch.zeros(4), torch.zeros(4, dtype=torch.long), r"\(N, C\)"),
    (torch.zeros(4, 3, 2), torch.zeros(4, dtype=torch.long), r"\(N, C\)"),
    (torch.zeros(4, 3, dtype=torch.long), torch.zeros(4, dtype=torch.long), "floating-point"),
    (torch.zeros(4, 3), torch.zeros(4), "integer"),
    (torch.zeros(4, 3), torch.zeros(4, 1, dtype=torch.long), r"\(N,\)"),
    (torch.zeros(4, 3), torch.zeros(5, dtype=torch.long), "disagree"),
    (np.zeros((4, 3)), torch.zeros(4, dtype=torch.long), "ndarray"),
])
def test_shape_and_dtype_errors(logits, targets, match):
    for name in MULTICLASS:
        with pytest.raises(ValueError, match=match):
            losses.make_loss(name)(logits, targets)


def test_integer_targets_of_any_width_accepted():
    logits, targets = random_batch(n=20)
    ref = losses.ce(logits, targets)
    for dtype in (torch.int32, torch.uint8, torch.int16):
        assert torch.equal(losses.ce(logits, targets.to(dtype)), ref)


@pytest.mark.parametrize("name,params,bad", [
    ("phuber_ce", {"tau": 1.0}, "tau=1.0"), ("phuber_ce", {"tau": 0.5}, "tau=0.5"),
    ("phuber_ce", {"tau": -3}, "tau=-3"), ("phuber_ce", {"tau": float("nan")}, "tau=nan"),
    ("phuber_ce", {"tau": float("inf")}, "tau=inf"), ("phuber_ce", {"tau": "10"}, "tau='10'"),
    ("phuber_gce", {"tau": 1.0}, "tau=1.0"), ("phuber_gce", {"q": 0.0}, "q=0.0"),
    ("phuber_gce", {"q": 1.5}, "q=1.5"), ("gce", {"q": 0}, "q=0"), ("gce", {"q": -0.1}, "q=-0.1"),
    ("gce", {"q": 1.0001}, "q=1.0001"), ("gce", {"q": float("nan")}, "q=nan"),
    ("sce", {"alpha": 0}, "alpha=0"), ("nce_rce", {"beta": -1.0}, "beta=-1.0"),
    ("sce", {"A": 0.0}, "A=0.0"), ("nce_rce", {"A": float("-inf")}, "A=-inf"), ("gce", {"A": -4.0}, "A"),
    ("ce", {"tau": 10}, "tau"), ("linear", {"q": 0.5}, "q"), ("gce", {"tau": 2}, "tau"),
])
def test_bad_parameters_raise(name, params, bad):
    with pytest.raises(ValueError, match=bad.replace("(", r"\(").replace(".", r"\.")):
        losses.make_loss(name, **params)


def test_functional_forms_validate_parameters_too():
    logits, targets = random_batch(n=5)
    with pytest.raises(ValueError, match="tau=1"):
        losses.phuber_ce(logits, targets, tau=1)
    with pytest.raises(ValueError, match="q=2"):
        losses.gce(logits, targets, q=2)
    with pytest.raises(ValueError, match="tau=2"):
        margin_losses.huberised(np.zeros(3), 2)
    with pytest.raises(ValueError, match="tau=0.5"):
        margin_losses.partially_huberised(np.zeros(3), 0.5)


def test_unknown_name_lists_valid_names_and_ranges():
    with pytest.raises(ValueError) as err:
        losses.make_loss("phuber")
    message = str(err.value)
    assert "'phuber'" in message
    for name in losses.LOSSES:
        assert name in message
    assert "tau in (1, inf)" in message and "q in (0, 1]" in message


def test_registry():
    assert list(losses.LOSSES)[:5] == ["ce", "linear", "gce", "phuber_ce", "phuber_gce"]
    assert losses.make_loss("phuber_ce").params == {"tau": 10.0}
    assert losses.make_loss("phuber_gce", tau=None, q=None).params == {"tau": 10.0, "q": 0.7}
    assert losses.make_loss("gce").params == {"q": 0.7}
    assert losses.make_loss("phuber_ce", tau=2).params == {"tau": 2.0}
    assert "tau=2" in repr(losses.make_loss("phuber_ce", tau=2))


def loaded_by_import(module):
    """(project modules, other top-level modules) that `import module` loads: the module-level imports of
    the module and, in turn, of each project module it imports (a function's own imports run later)."""
    project, others, todo = set(), set(), [module]
    while todo:
        name = todo.pop()
        if name in project:
            continue
        project.add(name)
        with open(os.path.join(HERE, name + ".py"), encoding="utf-8") as f:
            body = list(ast.parse(f.read()).body)
        while body:
            node = body.pop()
            if isinstance(node, ast.Import):
                found = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                found = [node.module.split(".")[0]] if node.level == 0 else []
            else:  # statements that run at import: a class body, a try or an if (not `if __name__ == ...`)
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not (
                        isinstance(node, ast.If) and "__name__" in ast.unparse(node.test)):
                    body += [child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt)]
                continue
            for top in found:
                (todo.append(top) if os.path.exists(os.path.join(HERE, top + ".py")) else others.add(top))
    return project, others - set(sys.stdlib_module_names)


def test_import_loads_only_torch_and_numpy():
    # losses.py: torch, and the tables of catalog.py, which the tools that never start torch import alone
    # (flags, run names, tables); catalog.py's one-line errors (errors.py) are standard library only
    assert loaded_by_import("losses") == ({"losses", "catalog", "errors"}, {"torch"})
    assert loaded_by_import("catalog") == ({"catalog", "errors"}, set())
    # what the project's modules import in turn counts: training.py loads numpy through data.py
    project, others = loaded_by_import("training")
    assert {"training", "data", "losses", "catalog"} <= project and others == {"torch", "numpy"}


@pytest.mark.parametrize("value,interval,ok", [
    (1.5, "(1, inf)", True), (1, "(1, inf)", False), (float("inf"), "(1, inf)", False),
    (float("nan"), "(0, 1]", False), (1, "(0, 1]", True), (0, "(0, 1]", False), (0, "[0, 1)", True),
    (np.float32(10), "(1, inf)", True), (np.int64(3), "(1, inf)", True), (True, "(0, 1]", False),
    ("10", "(1, inf)", False), (None, "(1, inf)", False), (-4.0, "(-inf, 0)", True),
])
def test_interval_check(value, interval, ok):
    if ok:
        assert catalog.check_param("x", value, interval) == float(value)
    else:
        with pytest.raises(ValueError, match=f"x={value!r} is not allowed: x must be a number in"):
            catalog.check_param("x", value, interval)


# ---------------------------------------------------------------------------------------------
# Issue 12: targets out of range never pass silently; tiny q keeps its accuracy.

@pytest.mark.parametrize("name", MULTICLASS)
@pytest.mark.parametrize("bad", [-100, -1, 10, 255])
def test_out_of_range_targets_raise(name, bad):
    logits, targets = random_batch(n=8)
    targets[3] = bad  # -100 is torch's ignore_index: cross_entropy alone would skip it silently
    with pytest.raises(ValueError, match="class indices in \\[0, 10\\), got values from"):
        losses.make_loss(name)(logits, targets)
    with pytest.raises(ValueError, match="class indices"):
        getattr(losses, name)(logits, targets)
    # the training loop checks its labels once per dataset and turns the per-call check off
    unchecked = losses.make_loss(name, check_targets=False)
    assert not unchecked.check_targets
    targets[3] = 0
    assert torch.equal(unchecked(logits, targets), losses.make_loss(name)(logits, targets))


def one_minus_power_over_q(p, q):
    """(1 - p^q)/q in 50-digit decimal arithmetic, as -ln p * sum_k (q ln p)^k / (k+1)!: a series
    with no cancellation, independent of losses.py's expm1 form."""
    getcontext().prec = 50
    x, term, total, k = Decimal(q) * Decimal(p).ln(), Decimal(1), Decimal(0), 0
    while abs(term) > Decimal(10) ** -45:
        total += term
        k += 1
        term = term * x / (k + 1)
    return -Decimal(p).ln() * total


def phuber_gce_reference(p, tau, q):
    p_star = Decimal(tau) ** (Decimal(1) / (Decimal(q) - 1))
    if Decimal(p) <= p_star:  # the tangent at p*, slope -tau
        return float(one_minus_power_over_q(p_star, q) - Decimal(tau) * (Decimal(p) - p_star))
    return float(one_minus_power_over_q(p, q))


@pytest.mark.parametrize("q", [0.7, 1e-6, 1e-14, 1e-40, 1e-100, 1e-300])
@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_gce_and_phuber_gce_keep_their_accuracy_for_tiny_q(q, dtype, rtol):
    # targets with p on both sides of p* = tau^(1/(q-1)) (about 1/tau = 0.1 for small q)
    logits = torch.tensor([[0.0, 9.0, -1.0], [0.0, 1.5, -1.0], [3.0, 0.0, 0.0], [0.0, 4.0, 4.0]], dtype=torch.float64)
    targets = torch.tensor([0, 0, 0, 0])
    p = torch.softmax(logits, 1)[:, 0].tolist()
    p_star = float(Decimal(10) ** (Decimal(1) / (Decimal(q) - 1)))
    assert min(p) < p_star < max(p)  # both branches
    gce = losses.gce(logits.to(dtype), targets, q=q, reduction="none")
    ph = losses.phuber_gce(logits.to(dtype), targets, tau=10, q=q, reduction="none")
    np.testing.assert_allclose(gce.numpy(), [float(one_minus_power_over_q(v, q)) for v in p], rtol=rtol)
    np.testing.assert_allclose(ph.numpy(), [phuber_gce_reference(v, 10, q) for v in p], rtol=rtol)
    x = logits.to(dtype).requires_grad_(True)
    (grad,) = torch.autograd.grad(losses.phuber_gce(x, targets, tau=10, q=q), x)
    assert torch.isfinite(grad).all()


def test_numpy_scalars_are_parameters():
    assert losses.make_loss("phuber_gce", tau=np.float32(10), q=np.float64(0.5)).params == {"tau": 10.0, "q": 0.5}
    logits, targets = random_batch(n=5)
    assert torch.equal(losses.phuber_ce(logits, targets, tau=np.int64(3)), losses.phuber_ce(logits, targets, tau=3.0))
