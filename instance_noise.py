"""Instance-dependent label noise (docs/noise.md); data.py imports this only for these two kinds:

    instance_noise    --noise instance: Xia et al. (NeurIPS 2020)'s generator, a flip rate per sample and a
                      random linear map of its image choose whether and where its label goes
    load_with_labels  --noise human: real annotators' labels, the CIFAR-10N / CIFAR-100N label files (Wei et
                      al., ICLR 2022). A file comes from outside: it is read as untrusted input (tensors and
                      numpy arrays only), and its clean labels must be the training set's, in its order.
"""
import hashlib
import io
import math
import os
import re
import warnings

import numpy as np
import torch

import results
from catalog import DATASETS
from data import DataError, DataMissing, int64_labels, load_dataset

CIFAR_N = "https://github.com/UCSC-REAL/cifar-10-100n"  # the human label files (catalog.HUMAN_NOISE)
LABEL_FILE_LIMIT = 64 << 20  # they are 2.4 MB and less (CIFAR-10N: six arrays of 50,000 int64 labels)


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


def read_human_labels(path, dataset, key):
    """(clean, noisy, sha256) from a CIFAR-N file: a torch-saved dict of 50,000 labels per key, in the
    order of the CIFAR training set. Read as untrusted input: only tensors and numpy arrays unpickle."""
    name = DATASETS[dataset]["human"]["file"]
    if os.path.isdir(path):
        raise DataError(f"{path}: is a folder; --noise-file names the CIFAR-N label file itself ({name})")
    if not os.path.exists(path):
        raise DataMissing(f"{path}: CIFAR-N label file not found. Get {name} from {CIFAR_N} (its data/ folder) "
                          f"and put it there, or give its path with --noise-file")
    try:  # the bytes parsed are the bytes hashed: the run's name carries their hash (data.prepare checks it)
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




def load_with_labels(config):
    """load_dataset, with the human labels of --noise-file checked against it: (arrays, (noisy labels, file
    SHA-256)). The file is read first, so that its errors come before the dataset's load."""
    clean, noisy, sha256 = read_human_labels(config.noise_file, config.dataset, config.noise_key)
    arrays = load_dataset(config.dataset, config.data_dir, config.download)
    check_human_labels(config.noise_file, config.dataset, clean, noisy, arrays[1],
                       num_classes=DATASETS[config.dataset]["classes"])
    return arrays, (noisy, sha256)
