"""Label noise: applied once to the training labels, on the CPU, from its own seeded generator.

    symmetric    flip with probability rho to one of the other K-1 classes uniformly (the report's)
    asymmetric   flip with probability rho along the dataset's class map (catalog.py: flips)
    instance     Xia et al. (NeurIPS 2020): a flip rate per sample and a random linear map of its
                 image choose whether and where its label goes (instance_noise)
    human        CIFAR-10N / CIFAR-100N (Wei et al., ICLR 2022): annotators' labels, read from the
                 project's file by data.read_human_labels
    noise_record realised flip rate, clean x noisy counts and a hash of the noisy labels

Every kind is one vectorised function: nothing runs per sample in Python. See docs/noise.md.
"""
import hashlib
import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Spec:
    """The label noise of a run: its settings (cli.parse's config) and, for human noise, the file."""
    kind: str = "symmetric"  # symmetric, asymmetric, instance or human
    rho: float = 0.0         # flip probability; instance: the mean of the per-sample rates
    seed: int = 0            # --noise-seed: the noise's generator (and the validation split's)
    key: str = None          # human: the file's key (aggre_label, worse_label, noisy_label, ...)
    file: str = None         # human: the label file (--noise-file, or the project's file name in --data-dir)
    features: str = "raw"    # instance: the images as Xia et al.'s code uses them (raw) or "normalised"


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


# ---------------------------------------------------------------------------------------------
# Instance-dependent noise (Xia et al., 2020, "Part-dependent label noise", their generator).

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


# ---------------------------------------------------------------------------------------------
# The record.

def noise_record(clean, noisy, num_classes):
    """Realised flip rate, K x K transition counts (clean x noisy) and a hash of the noisy labels."""
    counts = torch.bincount(clean * num_classes + noisy, minlength=num_classes ** 2).view(num_classes, -1)
    return dict(flip_rate=(clean != noisy).double().mean().item(), transitions=counts,
                label_hash=label_hash(noisy))


def label_hash(labels):
    return hashlib.sha256(labels.to(torch.int64).numpy().astype("<i8").tobytes()).hexdigest()[:16]
