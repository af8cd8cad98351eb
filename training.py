"""The training loop shared by train_mnist.py and train_cifar.py (experiment.py runs it).

    Model, Optimiser  what is trained, and the optimiser's state (torch optimiser, schedule, gradient
                      scaler) with its clipping: small dataclasses
    AMP, fused        the autocast dtype of each --amp; which optimiser kernels a device gets
    train_epoch       the one loop: forward, loss, backward, optional clip, step, lr step
    evaluate          accuracy, loss, NLL and calibration error of a labelled set
    epoch_row         an epoch's row of epochs.csv (results.EPOCH_COLUMNS), and its line on stdout

Each batch is gathered from a per-epoch permutation of the uint8 data on the device, augmented and
normalised there. Nothing in the loop waits for the device: per step, only the loss and the
predictions are written into device buffers, and they are read once per epoch.
"""
import copy
import math
import sys
import time
from dataclasses import dataclass

import torch

import losses
from data import normalise, random_crop_flip


@dataclass
class Model:
    """The network, the loss, and how a batch goes through them."""
    net: torch.nn.Module
    criterion: torch.nn.Module
    forward: object = None          # net itself, or its torch.compile'd form
    amp: torch.dtype = None         # autocast dtype; None: float32
    channels_last: bool = False

    def __post_init__(self):
        self.forward = self.net if self.forward is None else self.forward
        self.device = next(self.net.parameters()).device

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None)

    def inputs(self, images, mean, std):
        """uint8 images as the network's normalised float input."""
        x = normalise(images, mean, std)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


AMP = {"fp16": torch.float16, "bf16": torch.bfloat16, None: None}  # --amp: the autocast dtype (None: float32)


def fused(device, compiled=False):
    """The optimisers' `fused` flag: torch's fused kernels on CUDA, with which the fp16 gradient
    scaler skips a step with inf/NaN gradients on the device (with the default kernels GradScaler.step
    reads that flag back every step: a host sync). Not for a compiled model, whose gradients inductor
    may lay out otherwise than their weights, which the fused kernels refuse (pytorch/pytorch#126585),
    nor off CUDA, so that CPU results stay as they were: there torch's default (None)."""
    return True if device.type == "cuda" and not compiled else None


@dataclass
class Optimiser:
    """The optimiser's state and settings: what each step of the loop updates and how it clips."""
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler  # stepped every iteration: schedules are per iteration
    scaler: torch.amp.GradScaler
    clip_norm: float = None
    per_example: bool = False       # clip each sample's gradient before averaging, not the batch's


def per_example_clipped_backward(model, x, y, clip_norm):
    """Set p.grad to the mean of per-sample gradients, each clipped to norm `clip_norm`.

    Per-sample gradients come from torch.func (vmap over grad), not a loop over samples.
    Returns the logits, the mean loss and the per-sample gradient norms (before clipping).
    """
    net = model.net
    params = {k: p.detach() for k, p in net.named_parameters()}
    buffers = {k: b.detach() for k, b in net.named_buffers()}
    criterion = model.criterion
    check = getattr(criterion, "check_targets", False)
    if check:  # a loss's check of its targets reads values, which vmap cannot: the batch is checked below
        criterion = copy.copy(criterion)
        criterion.check_targets = False

    def sample_loss(params, xi, yi):
        with model.autocast():
            logits = torch.func.functional_call(net, (params, buffers), (xi.unsqueeze(0),))
        return criterion(logits, yi.unsqueeze(0)), logits.squeeze(0)

    grads, (sample_losses, logits) = torch.func.vmap(
        torch.func.grad_and_value(sample_loss, has_aux=True), in_dims=(None, 0, 0))(params, x, y)
    if check:
        losses.check_targets_in_range(y, logits.shape[1])
    norms = torch.sqrt(sum(g.flatten(1).float().pow(2).sum(1) for g in grads.values()))
    scale = (clip_norm / (norms + 1e-6)).clamp(max=1.0)
    for name, p in net.named_parameters():
        g = grads[name]  # the mean laid out as its weight (channels-last): fused optimisers need that
        p.grad = torch.empty_like(p).copy_((g * scale.view(-1, *[1] * (g.dim() - 1)).to(g.dtype)).mean(0))
    return logits, sample_losses.mean(), norms


def train_epoch(model, optimiser, data, generator, *, batch_size, augment):
    """One pass over the training set in a fresh random order; returns (step losses, statistics).

    A non-finite loss is still reported with its step, from the buffer of step losses.
    """
    model.net.train()
    dev = data.train_y.device
    n, b = len(data.train_y), batch_size
    steps = math.ceil(n / b)
    perm = torch.randperm(n, device=dev, generator=generator)
    step_losses = torch.zeros(steps, device=dev)
    preds = torch.empty(n, dtype=torch.long, device=dev)
    norms = torch.zeros(n, device=dev) if optimiser.per_example else None
    progress = Progress(steps) if sys.stderr.isatty() else None
    for i in range(steps):
        batch = slice(i * b, (i + 1) * b)
        idx = perm[batch]
        images = data.train_x[idx]
        if augment:
            images = random_crop_flip(images, generator)
        x, y = model.inputs(images, data.mean, data.std), data.train_y[idx]
        optimiser.optimizer.zero_grad(set_to_none=True)
        if norms is not None:
            logits, loss, norms[batch] = per_example_clipped_backward(model, x, y, optimiser.clip_norm)
        else:
            with model.autocast():
                logits = model.forward(x)
                loss = model.criterion(logits, y)
            optimiser.scaler.scale(loss).backward()
            if optimiser.clip_norm is not None:  # clip the true gradient: unscale first under fp16
                optimiser.scaler.unscale_(optimiser.optimizer)
                torch.nn.utils.clip_grad_norm_(model.net.parameters(), optimiser.clip_norm)
        optimiser.scaler.step(optimiser.optimizer)
        optimiser.scaler.update()
        optimiser.scheduler.step()
        step_losses[i] = loss.detach()
        preds[batch] = logits.detach().argmax(1)
        if progress:
            progress.update(i + 1, (i + 1) * b)
    if progress:
        progress.close()
    sizes = torch.full((steps,), float(b), device=dev)
    sizes[-1] = n - (steps - 1) * b  # the last batch may be smaller
    stats = epoch_stats(preds, data.train_y[perm], data.train_clean[perm], norms, optimiser.clip_norm)
    stats["loss_sum"] = (step_losses * sizes).sum().item()
    return step_losses, stats


def epoch_stats(pred, y, clean, norms=None, clip_norm=None):
    """Counts over the epoch's predictions (and per-sample gradient norms), clean and corrupted apart."""
    corrupted, fits, right = y != clean, pred == y, pred == clean
    counts = [fits, right, corrupted, fits & corrupted, right & corrupted, ~corrupted]
    names = ["correct_noisy", "correct_clean", "corrupted", "memorised", "corrupted_clean", "clean_seen"]
    values = torch.stack(counts).sum(1).double()
    if norms is not None:
        clipped = norms > clip_norm
        names += ["clipped_clean", "clipped_corrupted", "norm_sum_clean", "norm_sum_corrupted"]
        values = torch.cat([values, torch.stack([(clipped & ~corrupted).sum(), (clipped & corrupted).sum(),
                                                 (norms * ~corrupted).sum(), (norms * corrupted).sum()]).double()])
    return dict(zip(names, values.tolist()))


@torch.no_grad()
def predict(model, images, mean, std, batch=1000):
    """Logits (float32) of the network in eval mode, in batches."""
    model.net.eval()
    out = []
    for i in range(0, len(images), batch):
        with model.autocast():
            out.append(model.forward(model.inputs(images[i:i + batch], mean, std)).float())
    return torch.cat(out)


def expected_calibration_error(logits, labels, bins=15):
    """ECE with equal-width confidence bins: sum_b (n_b / n) |acc_b - conf_b|.

    Computed as sum_b |correct_b - confidence_b| / n with per-bin sums, which is the same thing.
    """
    conf, pred = torch.softmax(logits.float(), 1).max(1)
    correct = (pred == labels).float()
    which = torch.clamp((conf * bins).ceil().long() - 1, 0, bins - 1)  # bin b holds (b/B, (b+1)/B]
    correct_sums = torch.bincount(which, weights=correct, minlength=bins)
    conf_sums = torch.bincount(which, weights=conf, minlength=bins)
    return ((correct_sums - conf_sums).abs().sum() / max(len(labels), 1)).item()


def evaluate(model, images, labels, mean, std, *, clean=None):
    """Accuracy (%), loss, NLL and ECE on a labelled set; accuracy against clean labels if given.

    Accuracies come from integer counts (100 * 8899 / 10000 prints as 88.99, not 88.99000000000001).
    """
    if len(labels) == 0:
        return {}
    logits = predict(model, images, mean, std)
    pred = logits.argmax(1)
    out = dict(acc=100 * (pred == labels).sum().item() / len(labels), loss=model.criterion(logits, labels).item(),
               nll=losses.ce(logits, labels).item(), ece=expected_calibration_error(logits, labels))
    if clean is not None:
        out["clean_acc"] = 100 * (pred == clean).sum().item() / len(clean)
    return out


def epoch_row(stats, test, val, *, epoch, steps, lr, train_seconds, seconds):
    """The epoch's CSV row (results.EPOCH_COLUMNS); shares in %, clipping statistics only where
    per-sample norms exist."""
    corrupted, clean_seen = stats["corrupted"], stats["clean_seen"]
    seen = corrupted + clean_seen
    share = lambda a, b: 100 * a / b if b else None  # noqa: E731
    mean = lambda a, b: a / b if b else None  # noqa: E731
    clean_norms, corrupted_norms = (clean_seen, corrupted) if "norm_sum_clean" in stats else (0, 0)
    return dict(
        epoch=epoch, step=epoch * steps, lr=lr, train_loss=stats["loss_sum"] / seen,
        train_acc=share(stats["correct_noisy"], seen), train_clean_acc=share(stats["correct_clean"], seen),
        memorised=share(stats["memorised"], corrupted), corrupted_clean_acc=share(stats["corrupted_clean"], corrupted),
        test_loss=test["loss"], test_nll=test["nll"], test_ece=test["ece"], test_acc=test["acc"],
        val_acc=val.get("acc"), val_clean_acc=val.get("clean_acc"),
        clipped_clean=share(stats.get("clipped_clean"), clean_norms),
        clipped_corrupted=share(stats.get("clipped_corrupted"), corrupted_norms),
        grad_norm_clean=mean(stats.get("norm_sum_clean"), clean_norms),
        grad_norm_corrupted=mean(stats.get("norm_sum_corrupted"), corrupted_norms),
        epoch_seconds=seconds, images_per_second=seen / train_seconds)


def epoch_line(row, epochs):
    pct = lambda v: "-" if v is None else f"{v:.1f}%"  # noqa: E731
    val = f" val {pct(row['val_acc'])}" if row["val_acc"] is not None else ""
    return (f"epoch {row['epoch']}/{epochs} lr {row['lr']:.2e} loss {row['train_loss']:.4f} "
            f"train {pct(row['train_acc'])} clean {pct(row['train_clean_acc'])} "
            f"memorised {pct(row['memorised'])}{val} test {pct(row['test_acc'])} "
            f"({row['epoch_seconds']:.1f} s, {row['images_per_second']:,.0f} img/s)")


class Progress:
    """A live single-line display (rate, ETA) on a terminal; host-side only, no device sync."""

    def __init__(self, steps):
        self.steps, self.start, self.last = steps, time.monotonic(), 0.0

    def update(self, step, images):
        now = time.monotonic()
        if now - self.last < 0.5 and step < self.steps:
            return
        self.last = now
        rate = images / max(now - self.start, 1e-9)
        eta = (now - self.start) / step * (self.steps - step)
        sys.stderr.write(f"\r  step {step}/{self.steps}  {rate:,.0f} img/s  ETA {eta:.0f} s   ")
        sys.stderr.flush()

    def close(self):
        sys.stderr.write("\r" + " " * 60 + "\r")
        sys.stderr.flush()
