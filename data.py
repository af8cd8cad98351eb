"""Data for the training scripts: datasets, label noise, the split, augmentation.

    load_dataset      the four arrays of a dataset as uint8 / int64 tensors (torchvision downloads)
    add_label_noise   symmetric (the report's) or asymmetric (the dataset's flip map) noise
    instance_noise    Xia et al. (NeurIPS 2020): a flip rate per sample, a random linear map of its image
                      chooses where its label goes (human noise, CIFAR-N's files: human_labels.py)
    noise_record      realised flip rate, clean x noisy counts and a hash of the noisy labels
    prepare           all of it for one run: noise, noisy validation split, limits, on the device
    in_memory         images already in memory as Data (benchmarks, tests)
    normalise, random_crop_flip   per batch, on the device (one gather for crop + flip)

Data stay on the device as uint8 tensors for the whole run; nothing here runs per sample in Python.
"""
import gzip
import hashlib
import math
import os
import pickle
import struct
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from catalog import DATASETS  # files, classes, flip maps, torchvision classes: one entry per dataset
from errors import Failure

IDX_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


class DataError(Failure):
    """Data unreadable; the message names the file. Scripts exit 2 (bad input) with it."""


class DataMissing(DataError):
    """Data not found and not downloadable; the message says which files are expected where. Scripts
    exit 3 with it, which run_all.sh reports as 'skipped (data unavailable)'."""

    def __init__(self, message):
        super().__init__(message, code=3)


def read_idx(path, ndim):
    """An IDX file (optionally gzipped) of `ndim` dimensions as a uint8 tensor. Files come from
    outside: anything wrong raises DataError naming this file."""
    try:
        with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # unreadable, or a broken gzip stream
        raise DataError(f"{path}: cannot read it ({e})")
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        raise DataError(f"{path} is not an uint8 IDX file (bad magic number {raw[:4]!r})")
    if raw[3] != ndim:
        raise DataError(f"{path} has {raw[3]} dimensions: an IDX {'image' if ndim == 3 else 'label'} file has {ndim}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated inside its header ({len(raw)} bytes)")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) - header != math.prod(shape):
        raise DataError(f"{path} holds {len(raw) - header} bytes of data, but its header says {shape}")
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).reshape(shape)


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


def read_cifar(path, label_key):
    """A CIFAR python batch: (images uint8 (N, 3, 32, 32), labels int64 (N,)); DataError names the file.

    The batches are Python pickles, which can run code when loaded: use files from a source you trust.
    """
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="latin1")
    except Exception as e:  # a pickle can fail in any way; all of them mean this file is not a batch
        raise DataError(f"{path} is not a CIFAR python batch ({type(e).__name__}: {e})")
    if not isinstance(batch, dict) or "data" not in batch or label_key not in batch:
        raise DataError(f"{path} is not a CIFAR python batch: expected a dict with 'data' and {label_key!r}, "
                        f"got {type(batch).__name__}")
    data, labels = np.asarray(batch["data"]), np.asarray(batch[label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: 'data' is {data.dtype} of shape {data.shape}, expected uint8 of shape (N, 3072)")
    if labels.shape != (len(data),) or labels.dtype.kind not in "iu":
        raise DataError(f"{path}: {label_key!r} is {labels.dtype} of shape {labels.shape}, expected {len(data)} "
                        "integer labels")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(int64_labels(path, label_key, labels))


def int64_labels(path, key, labels):
    """Integer labels as int64, or DataError naming a value int64 cannot hold: converted, the uint64
    2^64 - 1 would read as -1. Arrays of other kinds pass unchanged (the callers say what they are)."""
    if labels.dtype.kind == "u" and labels.size and labels.max() > np.iinfo(np.int64).max:
        i = int(np.argmax(labels > np.iinfo(np.int64).max))
        raise DataError(f"{path}: {key} holds {int(labels[i])} at index {i}, not a class index")
    return labels.astype(np.int64) if labels.dtype.kind in "iu" else labels


def check_labels(path, labels, classes):
    """DataError naming `path` unless every label is a class index in [0, classes)."""
    if len(labels) and (labels.min() < 0 or labels.max() >= classes):
        raise DataError(f"{path}: labels from {int(labels.min())} to {int(labels.max())}, but the dataset has "
                        f"{classes} classes (0 to {classes - 1})")


def download(name, data_dir):
    """Fetch through torchvision's dataset class (which checks the MD5 sums)."""
    import torchvision  # only needed to download
    fetch = getattr(torchvision.datasets, DATASETS[name]["torchvision"])
    fetch(data_dir, train=True, download=True)
    if DATASETS[name]["format"] == "idx":  # MNIST-like classes fetch the test files separately
        fetch(data_dir, train=False, download=True)


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
                raise DataMissing(f"{name} not found: expected {expected_files(name, data_dir)}; the download "
                                f"failed ({reason}). Fetch it where there is internet "
                                f"(--download --prepare-data) or point --data-dir at the folder holding it.")
        paths = find()
        if paths is None:
            raise DataMissing(f"{name} not found after download: expected {expected_files(name, data_dir)}")
    if spec["format"] == "idx":
        parts = []
        for images_path, labels_path in (paths[:2], paths[2:]):
            images, labels = read_idx(images_path, 3).unsqueeze(1), read_idx(labels_path, 1).long()
            if len(images) != len(labels):
                raise DataError(f"{images_path} holds {len(images)} images but {labels_path} {len(labels)} labels")
            if tuple(images.shape[1:]) != spec["shape"]:
                raise DataError(f"{images_path}: images of {images.shape[2]} x {images.shape[3]} pixels; {name} "
                                f"has {spec['shape'][1]} x {spec['shape'][2]}")
            check_labels(labels_path, labels, spec["classes"])
            parts += [images, labels]
        return tuple(parts)
    batches = [read_cifar(path, spec["label_key"]) for path in paths]
    for path, (_, labels) in zip(paths, batches):
        check_labels(path, labels, spec["classes"])
    n_train = len(spec["train_files"])
    train, test = batches[:n_train], batches[n_train:]
    return (torch.cat([x for x, _ in train]), torch.cat([y for _, y in train]),
            torch.cat([x for x, _ in test]), torch.cat([y for _, y in test]))


def derived_seed(*keys):
    """An independent 63-bit seed for each purpose (noise, validation split, ...) from integer keys."""
    return int(np.random.SeedSequence(list(keys)).generate_state(2, np.uint64)[0] >> np.uint64(1))


def fingerprint(arrays, noisy_hash, sizes):
    """What a run trains and tests on, so that a resumed run is the same run: hashes of the images
    and of the clean, noisy and test labels (arrays: load_dataset's), and the sizes after the split
    and limits ({train_size, val_size, test_size})."""
    train_x, train_y, test_x, test_y = arrays
    images = hashlib.sha256()
    for x in (train_x, test_x):
        images.update(x.numpy().data)  # a view of the uint8 tensor's memory: no copy
    return dict(images=images.hexdigest()[:16], clean_labels=label_hash(train_y), noisy_labels=noisy_hash,
                test_labels=label_hash(test_y), **sizes)


# ---------------------------------------------------------------------------------------------
# Label noise: applied once to the training labels, on the CPU (so that every device sees the same
# labels), from its own seeded generator; every kind is one vectorised function (docs/noise.md).

def flip_map(flips, num_classes):
    """Target class of every class as a tensor (identity where `flips` does not move the class)."""
    target = torch.arange(num_classes)
    for src, dst in flips.items():
        target[src] = dst
    return target


def add_label_noise(labels, rho, num_classes, noise, target, *, generator):
    """Flip each label with probability rho, on the CPU so every device sees the same labels.

    symmetric:  to one of the other K-1 classes uniformly (the report's convention);
    asymmetric: to target[label], for the classes the flip map moves (others never flip).
    """
    flip = torch.rand(len(labels), generator=generator) < rho
    if noise == "symmetric":
        offset = torch.randint(1, num_classes, (len(labels),), generator=generator)
        return torch.where(flip, (labels + offset) % num_classes, labels)
    return torch.where(flip, target[labels], labels)


def truncated_normal(n, mean, std, generator):
    """n draws of N(mean, std^2) truncated to [0, 1], for a mean in [0, 1], by the inverse CDF of
    uniforms from `generator` (float64). The window's lower end is at or below the mean, so its CDF
    values are not rounded to 1 (where the inverse would lose the tail)."""
    cdf = lambda z: 0.5 * math.erfc(-z / math.sqrt(2))  # noqa: E731
    low, high = cdf((0 - mean) / std), cdf((1 - mean) / std)
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    return (mean + std * torch.special.ndtri(low + u * (high - low))).clamp(0, 1)


def instance_noise(images, labels, num_classes, rho, generator, *, std=0.1):
    """Xia et al.'s instance-dependent noise on `images` (N, d), any real or uint8 dtype (their code: the
    raw pixel values 0-255, flattened; data.prepare): sample i gets a flip rate q_i ~ N(rho, std^2)
    truncated to [0, 1] (their std 0.1), then instance_flips. Returns the noisy labels. rho = 0 is
    clean labels: the truncated normal's mean would be 0.0798 (a table's rho = 0 column is the clean
    baseline)."""
    if rho == 0:
        return labels.clone()
    return instance_flips(images, labels, num_classes, truncated_normal(len(labels), rho, std, generator), generator)


def instance_flips(images, labels, num_classes, rates, generator):
    """Labels flipped as Xia et al.'s generator does, for given per-sample flip rates q.

    W ~ N(0, 1) is K x d x K. Label y of sample x moves to class j != y with probability
    q softmax_j(x W[y]) over j != y, and stays with 1 - q. Drawn in two equivalent stages: a flip with
    probability q (so q = 0 never flips), then the class by the Gumbel-max trick over the scores.
    The scores are one matmul per class; where a label goes depends on x, how often it flips on q.
    """
    n = len(labels)
    w = torch.randn(num_classes, images.shape[1], num_classes, generator=generator)
    scores = torch.empty(n, num_classes)
    for c in range(num_classes):  # K matmuls, not N: samples grouped by their label
        idx = (labels == c).nonzero().squeeze(1)
        scores[idx] = images[idx].float() @ w[c]
    scores[torch.arange(n), labels] = -math.inf  # the label's own class is not a flip target
    flip = torch.rand(n, generator=generator, dtype=torch.float64) < rates
    gumbel = -torch.log(-torch.log(torch.rand(n, num_classes, generator=generator).clamp_min(1e-30)))
    return torch.where(flip, (scores + gumbel).argmax(1), labels)


def noise_record(clean, noisy, num_classes):
    """Realised flip rate, K x K transition counts (clean x noisy) and a hash of the noisy labels."""
    counts = torch.bincount(clean * num_classes + noisy, minlength=num_classes ** 2).view(num_classes, -1)
    return dict(flip_rate=(clean != noisy).double().mean().item(), transitions=counts,
                label_hash=label_hash(noisy))


def label_hash(labels):
    return hashlib.sha256(labels.to(torch.int64).numpy().astype("<i8").tobytes()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Data on the device.

@dataclass
class Data:
    """Everything a run trains and evaluates on, as tensors on the device (uint8 images, int64 labels)."""
    classes: int
    channels: int
    mean: torch.Tensor          # (1, C, 1, 1) float32, per-channel statistics of the training images
    std: torch.Tensor
    train_x: torch.Tensor
    train_y: torch.Tensor       # noisy labels: what the run trains on
    train_clean: torch.Tensor   # true labels: for statistics only
    val_x: torch.Tensor         # held out of the noisy training set (--val-split); labels stay noisy
    val_y: torch.Tensor
    val_clean: torch.Tensor
    test_x: torch.Tensor        # clean
    test_y: torch.Tensor
    record: dict = field(default_factory=dict)  # the noise record over the whole training set
    fingerprint: dict = field(default_factory=dict)  # what the run trains and tests on (fingerprint())


def prepare(config, device):
    """Load, add label noise, hold out the noisy validation split, limit sizes, move to the device: the
    data of the run `config` (a config.Config)."""
    dataset, k = config.dataset, DATASETS[config.dataset]["classes"]
    human = None
    if config.noise == "human":
        import human_labels  # the CIFAR-N files: only for human noise
        arrays, human = human_labels.load_with_labels(config)
    else:
        arrays = load_dataset(dataset, config.data_dir, config.download)
    train_x, train_y, test_x, test_y = arrays
    if human and human[1] != config.noise_file_sha256:  # replaced since config.parse named the run for it
        raise DataError(f"{config.noise_file} changed while the run started: the run is named for SHA-256 "
                        f"{config.noise_file_sha256}, its labels are now {human[1]}: start it again")
    if config.noise == "symmetric" and config.rho > (k - 1) / k:
        warnings.warn(f"--rho {config.rho} exceeds (K-1)/K = {(k - 1) / k:.3f}: noisy labels are then "
                      "anti-correlated with the true ones")
    mean, std = channel_stats(train_x)
    mean, std = mean.float().view(1, -1, 1, 1), std.float().view(1, -1, 1, 1)
    noise_gen = torch.Generator().manual_seed(derived_seed(config.noise_seed, 0))
    if human:
        noisy_y = human[0]
    elif config.noise == "instance":  # Xia et al.'s tools.py: raw pixels 0-255, flattened (normalised: docs/noise.md)
        features = normalise(train_x, mean, std) if config.noise_features == "normalised" else train_x
        noisy_y = instance_noise(features.flatten(1), train_y, k, config.rho, noise_gen)
    else:
        flips = DATASETS[dataset]["flips"] if config.noise == "asymmetric" else {}
        noisy_y = add_label_noise(train_y, config.rho, k, config.noise, flip_map(flips, k), generator=noise_gen)
    # The noisy validation split depends on the noise seed only: identical across trials.
    order = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(derived_seed(config.noise_seed, 1)))
    n_val = int(round(config.val_split * len(train_y)))
    if n_val >= len(train_y):
        raise DataError(f"--val-split {config.val_split} holds out all {len(train_y)} training samples of {dataset}: "
                        "no sample would be left to train on")
    val_idx, train_idx = order[:n_val].sort().values, order[n_val:].sort().values
    if config.limit_train is not None:
        train_idx = train_idx[:config.limit_train]
    test_n = len(test_y) if config.limit_test is None else min(config.limit_test, len(test_y))
    record = noise_record(train_y, noisy_y, k)
    if human:
        record["file"] = dict(name=os.path.basename(config.noise_file), sha256=human[1])
    on = lambda t: t.to(device, non_blocking=True)  # noqa: E731
    return Data(
        classes=k, channels=train_x.shape[1], record=record,
        fingerprint=fingerprint(arrays, record["label_hash"], dict(train_size=len(train_idx), val_size=n_val,
                                                                   test_size=test_n)),
        mean=on(mean), std=on(std),
        train_x=on(train_x[train_idx]), train_y=on(noisy_y[train_idx]), train_clean=on(train_y[train_idx]),
        val_x=on(train_x[val_idx]), val_y=on(noisy_y[val_idx]), val_clean=on(train_y[val_idx]),
        test_x=on(test_x[:test_n]), test_y=on(test_y[:test_n]))


def describe(config):
    """--prepare-data: load (downloading if needed) and describe the dataset, and check a human-noise
    label file against it (run_all.sh checks each dataset this way before any cell runs)."""
    if config.noise == "human":
        import human_labels
        (train_x, _, test_x, _), _ = human_labels.load_with_labels(config)
    else:
        train_x, _, test_x, _ = load_dataset(config.dataset, config.data_dir, config.download)
    print(f"{config.dataset}: {len(train_x)} training and {len(test_x)} test images of shape "
          f"{tuple(train_x.shape[1:])} in {config.data_dir}"
          + (f"; labels {config.noise_key} of {config.noise_file}" if config.noise == "human" else ""))
    return 0


def in_memory(images, labels, device, classes=10, test=0):
    """Data of uint8 images with clean labels on the device, the last `test` of them the test set,
    no validation set: what bench.py and the tests feed training.train_epoch and evaluate."""
    mean, std = (v.float().view(1, -1, 1, 1).to(device) for v in channel_stats(images))
    x, y = images.to(device), labels.to(device)
    n = len(y) - test
    return Data(classes=classes, channels=images.shape[1], mean=mean, std=std, train_x=x[:n], train_y=y[:n],
                train_clean=y[:n], val_x=x[:0], val_y=y[:0], val_clean=y[:0], test_x=x[n:], test_y=y[n:],
                record=noise_record(y[:n], y[:n], classes))  # no flip: a RunFolder records it (bench.fit_seconds)


def channel_stats(images):
    """Exact per-channel mean and std of uint8 images (MNIST: its one channel), from pixel histograms."""
    values = torch.arange(256, dtype=torch.float64)
    counts = torch.stack([torch.bincount(images[:, c].flatten(), minlength=256) for c in range(images.shape[1])])
    counts = counts.double() / counts.sum(1, keepdim=True)
    mean = counts @ values
    std = (counts @ values ** 2 - mean ** 2).sqrt()
    return mean, std


def normalise(images_uint8, mean, std):
    return (images_uint8.float() - mean) / std


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
