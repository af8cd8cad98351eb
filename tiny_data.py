"""Tiny datasets in the real file formats (MNIST's IDX files, CIFAR's python pickles), made from a seed.

The tests and gpu_check.py cannot download the real data, so they generate it in the formats the
loaders read. Images carry a class-dependent pattern (a bright bar whose position is the class) plus
noise, so a few epochs of training get well above chance and tests can assert that learning happened.
The same seed gives the same images and labels.
"""
import gzip
import os
import pickle
import struct

import numpy as np

import catalog


def patterned_images(labels, channels, size, rng):
    images = rng.integers(0, 60, size=(len(labels), channels, size, size), dtype=np.uint8)
    rows = (np.asarray(labels) * 3) % (size - 2)
    for offset in range(2):
        images[np.arange(len(labels)), :, rows + offset, :] = 255
    return images


def write_idx(path, array):
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = b"\x00\x00\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with (gzip.open if path.endswith(".gz") else open)(path, "wb") as f:
        f.write(header + array.tobytes())


def make_idx_dataset(folder, n_train=600, n_test=200, *, classes=10, seed=0, gz=False):
    """The four MNIST IDX files, flat in `folder` (as Debian lays out Fashion-MNIST)."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, classes, n)
        write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte{suffix}"), patterned_images(labels, 1, 28, rng)[:, 0])
        write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte{suffix}"), labels)
    return folder


def make_cifar_dataset(root, name, n_train=250, n_test=100, seed=0):
    """The python pickles of catalog dataset `name` (format 'cifar': CIFAR-10's five training batches,
    CIFAR-100's one) under root, with the catalog's folder, file names and label key, like the real ones."""
    entry = catalog.DATASETS[name]
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, entry["folder"])
    os.makedirs(folder, exist_ok=True)
    train = entry["train_files"]
    files = [(f, n_train // len(train)) for f in train] + [(f, n_test) for f in entry["test_files"]]
    for filename, n in files:
        labels = rng.integers(0, entry["classes"], n)
        batch = {"data": patterned_images(labels, 3, 32, rng).reshape(n, -1),
                 "filenames": [f"{i}.png" for i in range(n)], entry["label_key"]: labels.tolist()}
        if entry["label_key"] == "fine_labels":  # CIFAR-100's batches also hold the superclasses (unread)
            batch["coarse_labels"] = (labels // 5).tolist()
        with open(os.path.join(folder, filename), "wb") as f:
            pickle.dump(batch, f)
    return root
