"""Data for the training scripts: datasets, the split, augmentation (label noise: noise.py).

    load_dataset      the four arrays of a dataset as uint8 / int64 tensors (torchvision downloads)
    load_with_labels  load_dataset, plus a CIFAR-10N / CIFAR-100N label file checked against it
    prepare           all of it for one run: noise, noisy validation split, limits, on the device
    in_memory         images already in memory as Data (benchmarks, tests)
    normalise, random_crop_flip   per batch, on the device (one gather for crop + flip)

Data stay on the device as uint8 tensors for the whole run; nothing here runs per sample in Python.
"""
import gzip
import hashlib
import io
import math
import os
import pickle
import re
import struct
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

import noise
import results
from catalog import DATASETS  # files, classes, flip maps, torchvision classes: one entry per dataset

CIFAR_N = "https://github.com/UCSC-REAL/cifar-10-100n"  # the human label files (catalog.HUMAN_NOISE)
LABEL_FILE_LIMIT = 64 << 20  # they are 2.4 MB and less (CIFAR-10N: six arrays of 50,000 int64 labels)
IDX_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


class DataError(Exception):
    """Data unreadable; the message names the file. Scripts exit 2 (bad input) with it."""


class DataMissing(DataError):
    """Data not found and not downloadable; the message says which files are expected where. Scripts
    exit 3 with it, which run_all.sh reports as 'skipped (data unavailable)'."""


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


# ---------------------------------------------------------------------------------------------
# Human label noise: the CIFAR-10N / CIFAR-100N label files (Wei et al., ICLR 2022).

def read_human_labels(path, dataset, key):
    """(clean, noisy, sha256) from a CIFAR-N file: a torch-saved dict of 50,000 labels per key, in the
    order of the CIFAR training set. Read as untrusted input: only tensors and numpy arrays unpickle."""
    name = DATASETS[dataset]["human"]["file"]
    if os.path.isdir(path):
        raise DataError(f"{path}: is a folder; --noise-file names the CIFAR-N label file itself ({name})")
    if not os.path.exists(path):
        raise DataMissing(f"{path}: CIFAR-N label file not found. Get {name} from {CIFAR_N} (its data/ folder) "
                          f"and put it there, or give its path with --noise-file")
    try:  # the bytes parsed are the bytes hashed: the run's name carries their hash (experiment.setup)
        raw = results.read_file(path, LABEL_FILE_LIMIT)
    except (OSError, results.BadFile) as e:
        raise DataError(str(e) if isinstance(e, results.BadFile) else f"{path}: cannot read it ({e.strerror})")
    try:  # torch's warnings about odd files would be more lines: the error below says it all
        with torch.serialization.safe_globals(numpy_globals()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            content = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- any unreadable file is the user's input: one line
        text = " ".join(str(e).split())  # torch's message is many lines, some in terminal colours
        unsupported = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        why = f"it holds {unsupported[1]}, not only tensors and numpy arrays of numbers" if unsupported else \
            "".join(c for c in text if c.isprintable())[:200] or "no message"
        raise DataError(f"{path}: not a CIFAR-N label file ({type(e).__name__}: {why})")
    if not isinstance(content, dict):
        raise DataError(f"{path}: not a CIFAR-N label file: holds a {type(content).__name__}, not a dict of labels")
    missing = [k for k in ("clean_label", key) if k not in content]
    if missing:
        raise DataError(f"{path}: has no {' or '.join(missing)} (its keys: {', '.join(map(str, content))})")
    clean, noisy = (as_labels(path, k, content[k]) for k in ("clean_label", key))
    return clean, noisy, hashlib.sha256(raw).hexdigest()


def numpy_globals():
    """What numpy arrays need to unpickle under torch.load(weights_only=True), under numpy 2's
    module names and numpy 1's (files saved with either). An empty array pickles its data as bytes():
    that call only, as bytes(n) would allocate what a file asks for."""
    core = np._core.multiarray._reconstruct
    dtypes = [type(np.dtype(t)) for t in ("int64", "int32", "int16", "int8", "uint8", "uint16", "uint32", "uint64",
                                          "float64", "float32", "float16", "bool")]  # to say they are not labels
    return [core, (core, "numpy.core.multiarray._reconstruct"), np.ndarray, np.dtype, *dtypes,
            (no_bytes, "builtins.bytes"), (no_bytes, "__builtin__.bytes")]


def no_bytes():
    return b""


def as_labels(path, key, value):
    """The labels under `key` as an int64 vector; anything else is a one-line DataError."""
    try:
        labels = torch.as_tensor(int64_labels(path, key, np.asarray(value)))
    except (TypeError, ValueError, RuntimeError) as e:
        raise DataError(f"{path}: {key} is not a label array ({e})")
    if labels.dim() != 1:
        raise DataError(f"{path}: {key} has shape {tuple(labels.shape)}, not one label per training image")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise DataError(f"{path}: {key} holds {labels.dtype} values, not integer labels")
    return labels.long()


def check_human_labels(path, dataset, clean_file, noisy, train_labels, *, num_classes):
    """The file's clean labels must be the training set's, in its order; its noisy ones valid classes."""
    if len(clean_file) != len(train_labels) or len(noisy) != len(train_labels):
        raise DataError(f"{path}: holds {len(clean_file)} clean and {len(noisy)} noisy labels, the {dataset} training "
                        f"set {len(train_labels)}: a file for another dataset?")
    differ = (clean_file != train_labels).nonzero()
    if len(differ):
        i = int(differ[0])
        raise DataError(f"{path}: clean_label differs from the {dataset} training labels first at index {i} "
                        f"(file {int(clean_file[i])}, data {int(train_labels[i])}): wrong dataset or wrong order")
    bad = ((noisy < 0) | (noisy >= num_classes)).nonzero()
    if len(bad):
        raise DataError(f"{path}: noisy label {int(noisy[int(bad[0])])} at index {int(bad[0])} is not a class of "
                        f"{dataset} (0 to {num_classes - 1})")


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
    return dict(images=images.hexdigest()[:16], clean_labels=noise.label_hash(train_y), noisy_labels=noisy_hash,
                test_labels=noise.label_hash(test_y), **sizes)


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


def load_with_labels(dataset, data_dir, download, spec):
    """load_dataset, and for human noise (noise.Spec) the label file's labels checked against it:
    (arrays, (noisy labels, file SHA-256) or None). The file is read first, so that its errors come
    before the dataset's load."""
    if spec.kind == "human":
        clean, noisy, sha256 = read_human_labels(spec.file, dataset, spec.key)
    arrays = load_dataset(dataset, data_dir, download)
    if spec.kind != "human":
        return arrays, None
    check_human_labels(spec.file, dataset, clean, noisy, arrays[1], num_classes=DATASETS[dataset]["classes"])
    return arrays, (noisy, sha256)


def prepare(job):
    """Load, add label noise, hold out the noisy validation split, limit sizes, move to the device.
    job: the run's resolved configuration (experiment.Run), of which this reads config (dataset,
    val_split, limit_train, limit_test), data_dir, download, label_noise (noise.Spec) and device."""
    config, spec, device = job.config, job.label_noise, job.device
    dataset, val_split = config["dataset"], config["val_split"]
    limit_train, limit_test = config["limit_train"], config["limit_test"]
    k = DATASETS[dataset]["classes"]
    arrays, human = load_with_labels(dataset, job.data_dir, job.download, spec)
    train_x, train_y, test_x, test_y = arrays
    mean, std = channel_stats(train_x)
    mean, std = mean.float().view(1, -1, 1, 1), std.float().view(1, -1, 1, 1)
    noise_gen = torch.Generator().manual_seed(derived_seed(spec.seed, 0))
    if human:
        noisy_y = human[0]
    elif spec.kind == "instance":  # Xia et al.'s tools.py: raw pixels 0-255, flattened (normalised: docs/noise.md)
        features = normalise(train_x, mean, std) if spec.features == "normalised" else train_x
        noisy_y = noise.instance_noise(features.flatten(1), train_y, k, spec.rho, noise_gen)
    else:
        flips = DATASETS[dataset]["flips"] if spec.kind == "asymmetric" else {}
        noisy_y = noise.add_label_noise(train_y, spec.rho, k, spec.kind, noise.flip_map(flips, k),
                                        generator=noise_gen)
    # The noisy validation split depends on the noise seed only: identical across trials.
    order = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(derived_seed(spec.seed, 1)))
    n_val = int(round(val_split * len(train_y)))
    if n_val >= len(train_y):
        raise DataError(f"--val-split {val_split} holds out all {len(train_y)} training samples of {dataset}: "
                        "no sample would be left to train on")
    val_idx, train_idx = order[:n_val].sort().values, order[n_val:].sort().values
    if limit_train is not None:
        train_idx = train_idx[:limit_train]
    test_n = len(test_y) if limit_test is None else min(limit_test, len(test_y))
    record = noise.noise_record(train_y, noisy_y, k)
    if human:
        record["file"] = dict(name=os.path.basename(spec.file), sha256=human[1])
    on = lambda t: t.to(device, non_blocking=True)  # noqa: E731
    return Data(
        classes=k, channels=train_x.shape[1], record=record,
        fingerprint=fingerprint(arrays, record["label_hash"], dict(train_size=len(train_idx), val_size=n_val,
                                                                   test_size=test_n)),
        mean=on(mean), std=on(std),
        train_x=on(train_x[train_idx]), train_y=on(noisy_y[train_idx]), train_clean=on(train_y[train_idx]),
        val_x=on(train_x[val_idx]), val_y=on(noisy_y[val_idx]), val_clean=on(train_y[val_idx]),
        test_x=on(test_x[:test_n]), test_y=on(test_y[:test_n]))


def in_memory(images, labels, device, classes=10, test=0):
    """Data of uint8 images with clean labels on the device, the last `test` of them the test set,
    no validation set: what bench.py and the tests feed training.train_epoch and evaluate."""
    mean, std = (v.float().view(1, -1, 1, 1).to(device) for v in channel_stats(images))
    x, y = images.to(device), labels.to(device)
    n = len(y) - test
    return Data(classes=classes, channels=images.shape[1], mean=mean, std=std, train_x=x[:n], train_y=y[:n],
                train_clean=y[:n], val_x=x[:0], val_y=y[:0], val_clean=y[:0], test_x=x[n:], test_y=y[n:])


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
