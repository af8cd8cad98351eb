"""Shared training code for train_mnist.py and train_cifar.py.

The two scripts hold the paper's settings (model, optimizer, schedule); this module holds what they
share, one function per stage:

    load_dataset    the four arrays of a dataset as uint8 tensors (torchvision downloads them)
    add_label_noise symmetric / asymmetric flips from their own seeded generator, with a record
    prepare_data    noise, held-out noisy validation split, size limits, all tensors on the device
    train_epoch     the one training loop: forward, loss, backward, optional clip, step, lr step
    evaluate        accuracy, loss, NLL and calibration error of a labelled set
    run             run directory, resume/skip, checkpoints, per-epoch and summary CSVs

Data stay on the device as uint8 tensors for the whole run; each batch is gathered from a
per-epoch permutation, augmented (random crop + flip in one gather) and normalised on the device.
Nothing in the hot loop waits for the device: statistics accumulate in device tensors and are read
once per epoch.
"""
import argparse
import contextlib
import csv
import fcntl
import gzip
import hashlib
import json
import math
import os
import pickle
import platform
import shlex
import struct
import sys
import tempfile
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F

import losses
import models

# ---------------------------------------------------------------------------------------------
# Datasets. The asymmetric flip maps are data (class -> class it is flipped to), the common
# definitions of Patrini et al. (2017) / Zhang & Sabuncu (2018); see README "Label noise".

CIFAR100_COARSE = [  # super-class of each fine label, in the order of the dataset's fine labels
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11, 6, 11, 5, 10, 7, 6, 13, 15, 3, 15,
    0, 11, 1, 10, 12, 14, 16, 9, 11, 5, 5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4,
    18, 17, 10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13, 16, 19, 2, 4, 6, 19,
    5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13]


def next_within_superclass(coarse):
    """Each class flips to the next class of its super-class, circularly."""
    flips = {}
    for group in sorted(set(coarse)):
        members = [c for c, g in enumerate(coarse) if g == group]
        flips.update({c: members[(i + 1) % len(members)] for i, c in enumerate(members)})
    return flips


DATASETS = {
    "mnist": dict(classes=10, format="idx", folder="MNIST",
                  flips={2: 7, 3: 8, 5: 6, 6: 5, 7: 1}),
    "fashion-mnist": dict(classes=10, format="idx", folder="FashionMNIST",  # shirt<->t-shirt,
                          flips={6: 0, 0: 6, 2: 4, 4: 2, 5: 7, 7: 5}),     # pullover<->coat, sandal<->sneaker
    "cifar10": dict(classes=10, format="cifar", folder="cifar-10-batches-py", label_key="labels",
                    train_files=[f"data_batch_{i}" for i in range(1, 6)], test_files=["test_batch"],
                    flips={9: 1, 2: 0, 4: 7, 3: 5, 5: 3}),  # truck->automobile, bird->airplane, deer->horse, cat<->dog
    "cifar100": dict(classes=100, format="cifar", folder="cifar-100-python", label_key="fine_labels",
                     train_files=["train"], test_files=["test"], flips=next_within_superclass(CIFAR100_COARSE)),
}
IDX_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
TORCHVISION_CLASS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "cifar10": "CIFAR10", "cifar100": "CIFAR100"}


class DataError(Exception):
    """Data missing or unreadable; the message says what to do. Scripts exit 2 with it."""


def read_idx(path):
    """An IDX file (optionally gzipped) as a uint8 tensor."""
    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        raise DataError(f"{path} is not an uint8 IDX file (bad magic number {raw[:4]!r})")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    return torch.frombuffer(bytearray(raw[4 + 4 * ndim:]), dtype=torch.uint8).reshape(shape)


def find_idx_files(data_dir, folder):
    """The four IDX files, in data_dir itself (Debian's layout) or in torchvision's data_dir/folder/raw."""
    for where in (data_dir, os.path.join(data_dir, folder, "raw")):
        found = []
        for name in IDX_FILES:
            path = next((p for p in (os.path.join(where, name), os.path.join(where, name + ".gz"))
                         if os.path.isfile(p)), None)
            found.append(path)
        if all(found):
            return found
    return None


def find_cifar_files(data_dir, spec):
    folder = os.path.join(data_dir, spec["folder"])
    paths = [os.path.join(folder, f) for f in spec["train_files"] + spec["test_files"]]
    return paths if all(os.path.isfile(p) for p in paths) else None


def read_cifar(paths, label_key):
    images, labels = [], []
    for path in paths:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="latin1")
        images.append(torch.from_numpy(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)))
        labels.append(torch.as_tensor(batch[label_key], dtype=torch.long))
    return torch.cat(images), torch.cat(labels)


def download(name, data_dir):
    """Fetch through torchvision's dataset class (which checks the MD5 sums)."""
    import torchvision  # only needed to download
    getattr(torchvision.datasets, TORCHVISION_CLASS[name])(data_dir, train=True, download=True)
    if DATASETS[name]["format"] == "idx":  # MNIST-like classes fetch the test files separately
        getattr(torchvision.datasets, TORCHVISION_CLASS[name])(data_dir, train=False, download=True)


def expected_files(name, data_dir):
    spec = DATASETS[name]
    if spec["format"] == "idx":
        return (f"{', '.join(IDX_FILES)} (or .gz) in {data_dir}/ or "
                f"{os.path.join(data_dir, spec['folder'], 'raw')}/")
    return f"{', '.join(spec['train_files'] + spec['test_files'])} in {os.path.join(data_dir, spec['folder'])}/"


def load_dataset(name, data_dir, force_download=False):
    """Return (train_images, train_labels, test_images, test_labels): uint8 (N, C, H, W), int64 (N,).

    Reads the files if present, else downloads them (torchvision); raises DataError if neither works.
    """
    spec = DATASETS[name]
    find = (lambda: find_idx_files(data_dir, spec["folder"])) if spec["format"] == "idx" else \
        (lambda: find_cifar_files(data_dir, spec))
    paths = find()
    if paths is None or force_download:
        try:
            download(name, data_dir)
        except Exception as e:  # no network, bad checksum, unwritable folder: all end the same way
            if paths is None:
                reason = str(e).strip().splitlines()[-1][:200] if str(e).strip() else type(e).__name__
                raise DataError(f"{name} not found: expected {expected_files(name, data_dir)}; the download "
                                f"failed ({reason}). Fetch it where there is internet "
                                f"(--download --prepare-data) or point --data-dir at the folder holding it.")
        paths = find()
        if paths is None:
            raise DataError(f"{name} not found after download: expected {expected_files(name, data_dir)}")
    try:
        if spec["format"] == "idx":
            train_x, train_y, test_x, test_y = (read_idx(p) for p in paths)
            train_x, test_x = train_x.unsqueeze(1), test_x.unsqueeze(1)
            train_y, test_y = train_y.long(), test_y.long()
        else:
            n_train = len(spec["train_files"])
            train_x, train_y = read_cifar(paths[:n_train], spec["label_key"])
            test_x, test_y = read_cifar(paths[n_train:], spec["label_key"])
    except (OSError, ValueError, KeyError, EOFError, pickle.UnpicklingError, RuntimeError) as e:
        raise DataError(f"{name}: cannot read {expected_files(name, data_dir)}: {e}")
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise DataError(f"{name}: image and label counts differ in {data_dir}")
    return train_x, train_y, test_x, test_y


# ---------------------------------------------------------------------------------------------
# Label noise: one vectorised function on its own generator, applied once to the training labels.

def derived_seed(*keys):
    """An independent 63-bit seed for each purpose (noise, validation split, ...) from integer keys."""
    return int(np.random.SeedSequence(list(keys)).generate_state(2, np.uint64)[0] >> np.uint64(1))


def flip_map(name, noise):
    """Target class of every class as a tensor (identity where the class is not flipped)."""
    k = DATASETS[name]["classes"]
    target = torch.arange(k)
    if noise == "asymmetric":
        for src, dst in DATASETS[name]["flips"].items():
            target[src] = dst
    return target


def add_label_noise(labels, rho, num_classes, noise, target, generator):
    """Flip each label with probability rho, on the CPU so every device sees the same labels.

    symmetric:  to one of the other K-1 classes uniformly (the report's convention);
    asymmetric: to target[label], for the classes the flip map moves (others never flip).
    """
    flip = torch.rand(len(labels), generator=generator) < rho
    if noise == "symmetric":
        offset = torch.randint(1, num_classes, (len(labels),), generator=generator)
        return torch.where(flip, (labels + offset) % num_classes, labels)
    return torch.where(flip, target[labels], labels)


def noise_record(clean, noisy, num_classes):
    """Realised flip rate, K x K transition counts (clean x noisy) and a hash of the noisy labels."""
    counts = torch.bincount(clean * num_classes + noisy, minlength=num_classes ** 2).view(num_classes, -1)
    return dict(flip_rate=(clean != noisy).double().mean().item(), transitions=counts,
                label_hash=label_hash(noisy))


def label_hash(labels):
    return hashlib.sha256(labels.to(torch.int64).numpy().astype("<i8").tobytes()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Data on the device.

class Data:
    """Everything a run trains and evaluates on, as tensors on the device."""

    def __init__(self, **tensors):
        self.__dict__.update(tensors)


def prepare_data(args, device):
    spec = DATASETS[args.dataset]
    train_x, train_y, test_x, test_y = load_dataset(args.dataset, args.data_dir, args.download)
    k = spec["classes"]
    mean, std = channel_stats(train_x)
    noise_gen = torch.Generator().manual_seed(derived_seed(args.noise_seed, 0))
    noisy_y = add_label_noise(train_y, args.rho, k, args.noise, flip_map(args.dataset, args.noise), noise_gen)
    record = noise_record(train_y, noisy_y, k)
    # The noisy validation split depends on the noise seed only: identical across trials.
    order = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(derived_seed(args.noise_seed, 1)))
    n_val = int(round(args.val_split * len(train_y)))
    val_idx, train_idx = order[:n_val].sort().values, order[n_val:].sort().values
    if args.limit_train is not None:
        train_idx = train_idx[:args.limit_train]
    test_n = len(test_y) if args.limit_test is None else min(args.limit_test, len(test_y))
    on = lambda t: t.to(device, non_blocking=True)  # noqa: E731
    return Data(
        classes=k, channels=train_x.shape[1], record=record,
        mean=on(mean.float().view(1, -1, 1, 1)), std=on(std.float().view(1, -1, 1, 1)),
        train_x=on(train_x[train_idx]), train_y=on(noisy_y[train_idx]), train_clean=on(train_y[train_idx]),
        val_x=on(train_x[val_idx]), val_y=on(noisy_y[val_idx]), val_clean=on(train_y[val_idx]),
        test_x=on(test_x[:test_n]), test_y=on(test_y[:test_n]))


def channel_stats(images):
    """Exact per-channel mean and std of uint8 images (MNIST: its one channel), from pixel histograms."""
    values = torch.arange(256, dtype=torch.float64)
    counts = torch.stack([torch.bincount(images[:, c].flatten(), minlength=256) for c in range(images.shape[1])])
    counts = counts.double() / counts.sum(1, keepdim=True)
    mean = counts @ values
    std = (counts @ values ** 2 - mean ** 2).sqrt()
    return mean, std


def normalise(images_uint8, data):
    return (images_uint8.float() - data.mean) / data.std


def random_crop_flip(images, generator, pad=4):
    """Zero-pad by `pad`, take a random crop of the original size and mirror half of the batch.

    Crop and flip are one gather over the flattened padded images: no per-sample Python.
    """
    b, c, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    dev = images.device
    dy = torch.randint(0, 2 * pad + 1, (b, 1, 1), device=dev, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b, 1, 1), device=dev, generator=generator)
    flip = torch.rand(b, 1, 1, device=dev, generator=generator) < 0.5
    cols = torch.arange(w, device=dev).view(1, 1, w)
    cols = dx + torch.where(flip, w - 1 - cols, cols)
    rows = dy + torch.arange(h, device=dev).view(1, h, 1)
    index = (rows * (w + 2 * pad) + cols).view(b, 1, h * w).expand(b, c, h * w)
    return padded.flatten(2).gather(2, index).view(b, c, h, w)


# ---------------------------------------------------------------------------------------------
# Training and evaluation.

def per_example_clipped_backward(net, criterion, x, y, clip_norm, autocast):
    """Set p.grad to the mean of per-sample gradients, each clipped to norm `clip_norm`.

    Per-sample gradients come from torch.func (vmap over grad), not a loop over samples.
    Returns the logits, the mean loss and the per-sample gradient norms (before clipping).
    """
    params = {k: p.detach() for k, p in net.named_parameters()}
    buffers = {k: b.detach() for k, b in net.named_buffers()}

    def sample_loss(params, xi, yi):
        with autocast():
            logits = torch.func.functional_call(net, (params, buffers), (xi.unsqueeze(0),))
        return criterion(logits, yi.unsqueeze(0)), logits.squeeze(0)

    grads, (sample_losses, logits) = torch.func.vmap(
        torch.func.grad_and_value(sample_loss, has_aux=True), in_dims=(None, 0, 0))(params, x, y)
    norms = torch.sqrt(sum(g.flatten(1).float().pow(2).sum(1) for g in grads.values()))
    scale = (clip_norm / (norms + 1e-6)).clamp(max=1.0)
    for name, p in net.named_parameters():
        g = grads[name]
        p.grad = (g * scale.view(-1, *[1] * (g.dim() - 1)).to(g.dtype)).mean(0)
    return logits, sample_losses.mean(), norms


def train_epoch(net, forward, optimizer, scheduler, scaler, criterion, data, args, generator, augment, autocast):
    """One pass over the training set in a fresh random order; returns the epoch's statistics.

    Per step, only the loss, the predictions (and per-sample gradient norms) are written into
    device buffers; everything is counted once at the end, so the loop never waits for the device
    and a non-finite loss is still reported with its step.
    """
    net.train()
    dev = data.train_y.device
    n, b = len(data.train_y), args.batch_size
    steps = math.ceil(n / b)
    perm = torch.randperm(n, device=dev, generator=generator)
    step_losses = torch.zeros(steps, device=dev)
    preds = torch.empty(n, dtype=torch.long, device=dev)
    norms = torch.zeros(n, device=dev) if args.clip_mode == "per-example" else None
    progress = Progress(steps) if sys.stderr.isatty() else None
    for i in range(steps):
        batch = slice(i * b, (i + 1) * b)
        idx = perm[batch]
        images = data.train_x[idx]
        if augment:
            images = random_crop_flip(images, generator)
        x = normalise(images, data)
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = data.train_y[idx]
        optimizer.zero_grad(set_to_none=True)
        if norms is not None:
            logits, loss, norms[batch] = per_example_clipped_backward(net, criterion, x, y, args.clip_norm, autocast)
        else:
            with autocast():
                logits = forward(x)
                loss = criterion(logits, y)
            scaler.scale(loss).backward()
            if args.clip_norm is not None:  # clip the true gradient: unscale first under fp16
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(net.parameters(), args.clip_norm)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()  # every schedule is expressed per iteration
        step_losses[i] = loss.detach()
        preds[batch] = logits.detach().argmax(1)
        if progress:
            progress.update(i + 1, (i + 1) * b)
    if progress:
        progress.close()
    sizes = torch.full((steps,), float(b), device=dev)
    sizes[-1] = n - (steps - 1) * b  # the last batch may be smaller
    stats = epoch_stats(preds, data.train_y[perm], data.train_clean[perm], norms, args.clip_norm)
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
def predict(net, forward, images, data, args, autocast, batch=1000):
    """Logits (float32) of the network in eval mode, in batches."""
    net.eval()
    out = []
    for i in range(0, len(images), batch):
        x = normalise(images[i:i + batch], data)
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast():
            out.append(forward(x).float())
    return torch.cat(out) if out else torch.zeros(0, data.classes, device=images.device)


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


def evaluate(net, forward, images, labels, criterion, data, args, autocast, clean=None):
    """Accuracy (%), loss, NLL and ECE on a labelled set; accuracy against clean labels if given."""
    if len(labels) == 0:
        return {}
    logits = predict(net, forward, images, data, args, autocast)
    pred = logits.argmax(1)
    out = dict(acc=100 * (pred == labels).double().mean().item(), loss=criterion(logits, labels).item(),
               nll=losses.ce(logits, labels).item(), ece=expected_calibration_error(logits, labels))
    if clean is not None:
        out["clean_acc"] = 100 * (pred == clean).double().mean().item()
    return out


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


# ---------------------------------------------------------------------------------------------
# Command line: flags both scripts share. Each script passes the paper's values as defaults.

# Flags that change how fast a run goes or where files go, never its numbers: not part of the
# run's identity, so a run can be resumed with a different --device or --out.
RUNTIME_FLAGS = {"device", "out", "data_dir", "download", "prepare_data", "resume", "force", "compile",
                 "save_model"}


class Parser(argparse.ArgumentParser):
    """Bad input: one line naming the value and what is allowed, exit status 2 (no usage dump)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def make_parser(doc, datasets, **defaults):
    p = Parser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("experiment (what the grid sweeps)")
    g.add_argument("--dataset", choices=datasets, default=datasets[0], help="dataset (default: %(default)s)")
    g.add_argument("--loss", default="ce", metavar="NAME",
                   help=f"training loss (default: %(default)s), one of: {losses.describe_losses()}")
    g.add_argument("--tau", type=float, help="partially Huberised threshold, > 1 (default: the loss's, 10)")
    g.add_argument("--q", type=float, help="GCE exponent, in (0, 1] (default: the loss's, 0.7)")
    g.add_argument("--alpha", type=float, help="sce / nce_rce weight of the first term (default: the loss's)")
    g.add_argument("--beta", type=float, help="sce / nce_rce weight of the RCE term (default: the loss's)")
    g.add_argument("--clip-norm", type=float, help="clip gradients to this L2 norm; 0.1 is the paper's "
                   "'CE + clipping' (default: no clipping)")
    g.add_argument("--clip-mode", choices=["global", "per-example"], default="global",
                   help="global: clip the mini-batch gradient (the paper's); per-example: clip each "
                   "sample's gradient before averaging (default: %(default)s)")
    g.add_argument("--rho", type=float, default=0.0, help="label flip probability, in [0, 1) (default: %(default)s)")
    g.add_argument("--noise", choices=["symmetric", "asymmetric"], default="symmetric",
                   help="symmetric: flip to one of the other K-1 classes uniformly (the paper's); "
                   "asymmetric: flip along the dataset's class map (default: %(default)s)")
    g.add_argument("--noise-seed", type=int, default=0,
                   help="seed of the label noise, the same for all trials as in the paper (default: %(default)s)")
    g.add_argument("--seed", type=int, default=0, help="trial seed: initialisation, data order, "
                   "augmentation (default: %(default)s)")
    g.add_argument("--val-split", type=float, default=0.0, help="fraction of the noisy training set held "
                   "out (labels stay noisy) and evaluated every epoch, in [0, 1) (default: %(default)s)")
    g = p.add_argument_group("optimisation (defaults: the paper's)")
    shown = lambda key: "%(default)s" if defaults[key] is not None else "the paper's for the dataset"  # noqa: E731
    g.add_argument("--epochs", type=int, default=defaults["epochs"], help=f"epochs (default: {shown('epochs')})")
    g.add_argument("--batch-size", type=int, default=defaults["batch_size"],
                   help=f"batch size (default: {shown('batch_size')})")
    g.add_argument("--lr", type=float, default=defaults["lr"], help=f"initial learning rate (default: {shown('lr')})")
    g.add_argument("--weight-decay", type=float, default=defaults["weight_decay"],
                   help=f"L2 weight decay (default: {shown('weight_decay')})")
    g = p.add_argument_group("run scale, hardware and files")
    g.add_argument("--limit-train", type=int, help="train on the first N training samples only (smoke runs)")
    g.add_argument("--limit-test", type=int, help="evaluate on the first N test samples only (smoke runs)")
    g.add_argument("--data-dir", default="data", help="dataset folder; may also be the folder holding the four "
                   "IDX files directly (default: %(default)s)")
    g.add_argument("--download", action="store_true", help="fetch the dataset with torchvision first")
    g.add_argument("--prepare-data", action="store_true",
                   help="only load (downloading if needed) and describe the dataset, then exit")
    g.add_argument("--out", default="results", help="results folder (default: %(default)s)")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device (default: %(default)s)")
    g.add_argument("--amp", choices=["bf16", "fp16"], help="mixed precision autocast; fp16 uses a gradient "
                   "scaler (default: off, float32)")
    g.add_argument("--channels-last", action="store_true", help="channels-last memory format (faster convs on GPUs)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoint")
    g.add_argument("--force", action="store_true", help="re-run even if this configuration has finished")
    g.add_argument("--save-model", action="store_true", help="keep the final weights as model.pt in the run folder")
    return p


def check_args(args, parser, num_classes, model_name):
    """Reject bad values with one line naming the value and what is allowed (exit 2)."""
    def bad(flag, value, allowed):
        parser.error(f"{flag} {value!r} is not allowed: {allowed}")
    if args.loss not in losses.LOSSES:
        bad("--loss", args.loss, f"valid losses are {losses.describe_losses()}")
    try:
        criterion = losses.make_loss(args.loss, tau=args.tau, q=args.q, alpha=args.alpha, beta=args.beta)
    except ValueError as e:
        parser.error(str(e))
    if not 0 <= args.rho < 1:
        bad("--rho", args.rho, "the flip probability must be in [0, 1)")
    if args.noise == "symmetric" and args.rho > (num_classes - 1) / num_classes:
        warnings.warn(f"--rho {args.rho} exceeds (K-1)/K = {(num_classes - 1) / num_classes:.3f}: "
                      "noisy labels are then anti-correlated with the true ones")
    if not 0 <= args.val_split < 1:
        bad("--val-split", args.val_split, "the held-out fraction must be in [0, 1)")
    for flag in ("epochs", "batch_size", "limit_train", "limit_test"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            bad("--" + flag.replace("_", "-"), value, "must be at least 1")
    if args.lr <= 0 or args.weight_decay < 0:
        bad("--lr/--weight-decay", (args.lr, args.weight_decay), "lr must be > 0 and weight decay >= 0")
    if args.clip_norm is not None and not args.clip_norm > 0:
        bad("--clip-norm", args.clip_norm, "the clipping threshold must be > 0")
    if args.clip_mode == "per-example":
        if args.clip_norm is None:
            bad("--clip-mode", args.clip_mode, "per-example clipping needs --clip-norm")
        if args.amp == "fp16":
            bad("--amp", args.amp, "per-example clipping supports --amp bf16 or float32 (no gradient scaler)")
        with torch.device("meta"):  # the architecture only: no memory, no initialisation cost
            batch_norm = models.has_batch_norm(models.make_model(model_name, num_classes, 3))
        if batch_norm:
            bad("--clip-mode", args.clip_mode, f"{model_name} has batch norm, which couples the samples of a "
                "batch, so per-sample gradients are not defined; use --clip-mode global or a model without "
                "batch norm (lenet)")
    try:
        torch.device(args.device)
    except RuntimeError:
        bad("--device", args.device, "use a torch device such as cpu, cuda or cuda:1")
    # the effective loss parameters (defaults resolved) are part of the run's identity
    for name in ("tau", "q", "alpha", "beta"):
        setattr(args, name, criterion.params.get(name))
    return criterion


def run_name(config):
    """Readable prefix plus a hash of every setting, so a grid never overwrites itself."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]
    parts = [config["dataset"], config["model"], config["loss"]]
    parts += [f"{k}{config[k]:g}" for k in ("tau", "q", "alpha", "beta") if config[k] is not None]
    if config["clip_norm"] is not None:
        parts.append(f"clip{config['clip_norm']:g}" + ("pe" if config["clip_mode"] == "per-example" else ""))
    parts += [f"{config['noise'][:3]}{config['rho']:g}", f"ns{config['noise_seed']}", f"s{config['seed']}", digest]
    return "-".join(parts)


# ---------------------------------------------------------------------------------------------
# Files: atomic writes, the shared summary (one row per finished run), checkpoints.

def write_atomic(path, write, binary=False):
    """Write through `write(file)` into a temporary file beside `path`, then rename over it:
    a reader, or a run killed mid-write, never sees half a file."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path), suffix=".tmp")
    try:
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", newline="")) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def save_figure(fig, stem):
    """A matplotlib figure as stem.png and stem.pdf, each written atomically."""
    for ext in ("png", "pdf"):
        write_atomic(f"{stem}.{ext}", lambda f: fig.savefig(f, format=ext, dpi=150, bbox_inches="tight"),
                     binary=True)


def write_csv(path, rows, columns=None):
    """Rows (dicts) as a CSV, atomically; columns default to every key, in first-seen order."""
    columns = columns or list(dict.fromkeys(k for row in rows for k in row))

    def write(f):
        w = csv.DictWriter(f, columns, extrasaction="raise", lineterminator="\n")
        w.writeheader()
        w.writerows({k: format_value(row.get(k)) for k in columns} for row in rows)
    write_atomic(path, write)


def format_value(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(float(v))  # shortest exact form, also for numpy floats
    if isinstance(v, (list, tuple)):
        return " ".join(str(x) for x in v)
    return v


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@contextlib.contextmanager
def locked(path):
    """Exclusive lock on path + '.lock', so parallel runs (GPUs, SLURM tasks) can share a file."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def finished_row(summary_path, name):
    if not os.path.exists(summary_path):
        return None
    with locked(summary_path):
        return next((row for row in read_csv(summary_path) if row.get("run") == name), None)


def record_summary(summary_path, row):
    """Add the run's row to the shared summary, replacing an older row of the same run."""
    with locked(summary_path):
        rows = read_csv(summary_path) if os.path.exists(summary_path) else []
        rows = [r for r in rows if r.get("run") != row["run"]] + [row]
        write_csv(summary_path, rows)


def versions():
    import torchvision
    return dict(python=platform.python_version(), torch=torch.__version__, torchvision=torchvision.__version__,
                numpy=np.__version__)


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def fail(message, code=2):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


# ---------------------------------------------------------------------------------------------
# One run, start to finish.

def run(args, parser, make_optimizer, lr_factor, augment):
    """Train the configuration in `args` (parsed by a script) and write its results.

    make_optimizer(params, args) and lr_factor(args, steps_per_epoch) -> (step -> factor) hold the
    script's paper settings; augment switches on random crop + flip. Returns the exit status.
    """
    spec = DATASETS[args.dataset]
    criterion = check_args(args, parser, spec["classes"], args.model)
    if args.prepare_data:
        try:
            train_x, _, test_x, _ = load_dataset(args.dataset, args.data_dir, args.download)
        except DataError as e:
            fail(str(e))
        print(f"{args.dataset}: {len(train_x)} training and {len(test_x)} test images of shape "
              f"{tuple(train_x.shape[1:])} in {args.data_dir}")
        return 0

    config = {k: v for k, v in sorted(vars(args).items()) if k not in RUNTIME_FLAGS}
    name = run_name(config)
    run_dir = os.path.join(args.out, "runs", name)
    summary_path = os.path.join(args.out, "summary.csv")
    checkpoint_path = os.path.join(run_dir, "checkpoint.pt")
    done = finished_row(summary_path, name)
    if done and not args.force:
        print(f"{name}: already finished (test accuracy {done.get('test_acc')}%); --force re-runs it")
        return 0
    resuming = os.path.exists(checkpoint_path) and not args.force
    if resuming and not args.resume:
        fail(f"{checkpoint_path} holds an interrupted run of this configuration: "
             "pass --resume to continue it or --force to start over")

    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its fastest kernels
    try:
        data = prepare_data(args, device)
    except DataError as e:
        fail(str(e))
    torch.manual_seed(args.seed)
    net = models.make_model(args.model, data.classes, data.channels).to(device)
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last)
    forward = torch.compile(net) if args.compile else net
    optimizer = make_optimizer(net.parameters(), args)
    steps_per_epoch = math.ceil(len(data.train_y) / args.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(args, steps_per_epoch))
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[args.amp]
    autocast = lambda: torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)  # noqa: E731
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
    generator = torch.Generator(device).manual_seed(args.seed)

    history, elapsed, start_epoch = [], 0.0, 0
    if resuming:
        # on the CPU: RNG states must stay CPU tensors; load_state_dict moves the rest to the device
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        history, elapsed, start_epoch = state["history"], state["elapsed"], state["epoch"]
        print(f"{name}: resuming after epoch {start_epoch}")
    else:
        write_run_files(run_dir, args, config, name, data)
    print(f"{name}: {len(data.train_y)} training samples (realised flip rate "
          f"{100 * data.record['flip_rate']:.2f}% of the full training set), {len(data.val_y)} validation, "
          f"{len(data.test_y)} test; {args.epochs} epochs on {device}")

    for epoch in range(start_epoch + 1, args.epochs + 1):
        t0 = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        step_losses, stats = train_epoch(net, forward, optimizer, scheduler, scaler, criterion, data, args,
                                         generator, augment, autocast)
        bad = (~torch.isfinite(step_losses)).nonzero()  # the epoch's one host sync (with the stats)
        if len(bad):
            fail(f"non-finite training loss at epoch {epoch}, step {bad[0].item() + 1} of {len(step_losses)} "
                 f"(global step {(epoch - 1) * len(step_losses) + bad[0].item() + 1}); no result written, "
                 f"the last checkpoint is epoch {epoch - 1}", code=1)
        train_seconds = time.perf_counter() - t0
        test = evaluate(net, forward, data.test_x, data.test_y, criterion, data, args, autocast)
        val = evaluate(net, forward, data.val_x, data.val_y, criterion, data, args, autocast, clean=data.val_clean)
        seconds = time.perf_counter() - t0
        elapsed += seconds
        history.append(epoch_row(epoch, steps_per_epoch, lr, stats, test, val, train_seconds, seconds))
        save_checkpoint(checkpoint_path, dict(
            model=net.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
            scaler=scaler.state_dict(), generator=generator.get_state(), torch_rng=torch.get_rng_state(),
            epoch=epoch, history=history, elapsed=elapsed))
        write_csv(os.path.join(run_dir, "epochs.csv"), history)
        print(epoch_line(history[-1], args.epochs), flush=True)

    final = history[-1]  # results are always the final epoch's: no choice is made on test data
    row = dict(run=name, **config, **{k: final[k] for k in final if k not in ("epoch", "lr")},
               train_size=len(data.train_y), val_size=len(data.val_y),
               test_size=len(data.test_y), flip_rate=data.record["flip_rate"], label_hash=data.record["label_hash"],
               wall_seconds=elapsed, device=str(device), device_name=device_name(device), **versions(),
               finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    record_summary(summary_path, row)
    if args.save_model:
        save_checkpoint(os.path.join(run_dir, "model.pt"), net.state_dict())
    os.remove(checkpoint_path)
    print(f"{name}: final test accuracy {final['test_acc']:.2f}% after {args.epochs} epochs "
          f"({elapsed:.0f} s); summary row in {summary_path}")
    return 0


def epoch_row(epoch, steps, lr, stats, test, val, train_seconds, seconds):
    """The epoch's CSV row; shares in %, clipping statistics only where per-sample norms exist."""
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


def save_checkpoint(path, state):
    write_atomic(path, lambda f: torch.save(state, f), binary=True)


def write_run_files(run_dir, args, config, name, data):
    """The run's sidecars: command line, config and versions; the noise's transition counts."""
    os.makedirs(run_dir, exist_ok=True)
    meta = dict(run=name, command=" ".join(shlex.quote(a) for a in sys.argv), config=config,
                flip_rate=data.record["flip_rate"], label_hash=data.record["label_hash"],
                versions=versions(), started=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    write_atomic(os.path.join(run_dir, "config.json"), lambda f: json.dump(meta, f, indent=1))
    counts = data.record["transitions"]
    write_csv(os.path.join(run_dir, "noise_transitions.csv"),
              [dict(clean=c, **{f"noisy_{j}": int(counts[c, j]) for j in range(len(counts))})
               for c in range(len(counts))])
