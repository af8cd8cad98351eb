"""--clip-mode per-example: clip each sample's gradient before averaging (training.train_epoch uses it).

Per-sample gradients come from torch.func (vmap over grad), not a loop over samples. A network with
batch norm has none (its samples are coupled): check() refuses it, before any work.
"""
import copy

import torch

import losses
import models
from errors import Failure


def check(config):
    """A Failure unless the network has no batch norm, which couples the samples of a batch (so
    per-sample gradients are not defined); checked before any work, on the architecture alone."""
    with torch.device("meta"):  # no memory, no initialisation cost
        batch_norm = models.has_batch_norm(models.make_model(config.model, 10, 3))
    if batch_norm:
        raise Failure(f"--clip-mode per-example is not allowed with {config.model}: it has batch norm, which couples "
                      "the samples of a batch, so per-sample gradients are not defined; use --clip-mode global or a "
                      "model without batch norm (lenet)")


def clipped_backward(learner, x, y):
    """Set p.grad to the mean of per-sample gradients, each clipped to norm learner.clip_norm.

    Per-sample gradients come from torch.func (vmap over grad), not a loop over samples.
    Returns the logits, the mean loss and the per-sample gradient norms (before clipping).
    """
    net = learner.net
    params = {k: p.detach() for k, p in net.named_parameters()}
    buffers = {k: b.detach() for k, b in net.named_buffers()}
    criterion = learner.criterion
    check = getattr(criterion, "check_targets", False)
    if check:  # a loss's check of its targets reads values, which vmap cannot: the batch is checked below
        criterion = copy.copy(criterion)
        criterion.check_targets = False

    def sample_loss(params, xi, yi):
        with learner.autocast():
            logits = torch.func.functional_call(net, (params, buffers), (xi.unsqueeze(0),))
        return criterion(logits, yi.unsqueeze(0)), logits.squeeze(0)

    grads, (sample_losses, logits) = torch.func.vmap(
        torch.func.grad_and_value(sample_loss, has_aux=True), in_dims=(None, 0, 0))(params, x, y)
    if check:
        losses.check_targets_in_range(y, logits.shape[1])
    norms = torch.sqrt(sum(g.flatten(1).float().pow(2).sum(1) for g in grads.values()))
    scale = (learner.clip_norm / (norms + 1e-6)).clamp(max=1.0)
    for name, p in net.named_parameters():
        g = grads[name]  # the mean laid out as its weight (channels-last): fused optimisers need that
        p.grad = torch.empty_like(p).copy_((g * scale.view(-1, *[1] * (g.dim() - 1)).to(g.dtype)).mean(0))
    return logits, sample_losses.mean(), norms
