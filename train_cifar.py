"""ResNet-50 on CIFAR-10 / CIFAR-100 with noisy labels: one cell of Table 2 / Figure 3 (section 5.2).

    python train_cifar.py --dataset cifar100 --loss phuber_gce --rho 0.4 --seed 0 --amp fp16

trains the report's CIFAR ResNet-50 (3x3 stem, no max-pool) with SGD (Nesterov momentum 0.1, weight
decay 5e-4, lr 0.1) on CIFAR whose training labels were flipped with probability rho (noise seed 0
for every trial), with the standard augmentation (zero-pad 4, random 32x32 crop, horizontal flip),
and adds the final test accuracy to results/summary.csv (per-epoch curves in
results/runs/<run>/epochs.csv). The report gets 60.2 +- 0.2 % for this cell.

The report's settings per dataset (catalog.py; any flag overrides them):
    cifar10:  batch 64,  400 epochs, lr divided by 10 at epochs 160, 300, 360   (~12 GPU hours fp32)
    cifar100: batch 128, 200 epochs, lr divided by 5  at epochs 60, 120, 160    (~4 GPU hours fp32)
The report trained in fp16 mixed precision (autocast with a gradient scaler; 2x faster, same
accuracy): --amp fp16. --amp bf16 needs no scaler and is usually as accurate, but is a deviation.
Its grid: `bash run_all.sh --datasets cifar10,cifar100 -- --amp fp16`.
"""
import bisect
import os
import sys

import torch

import cli
import experiment


def lr_factor(gamma, milestones, steps_per_epoch):
    """Step decay by epoch, evaluated every iteration: lr * gamma^(milestones passed)."""
    return lambda step: gamma ** bisect.bisect_right(milestones, step // steps_per_epoch)


@cli.edge()  # a Failure raised below: its one line on stderr and its exit status
def main(argv=None):
    args, config = cli.parse(os.path.basename(__file__), argv, __doc__)
    return experiment.run(
        args, config, augment=True,
        make_optimizer=lambda params, fused: torch.optim.SGD(params, lr=config["lr"], momentum=config["momentum"],
                                                             nesterov=True, weight_decay=config["weight_decay"],
                                                             fused=fused),
        lr_factor=lambda steps_per_epoch: lr_factor(config["lr_gamma"], config["milestones"], steps_per_epoch))


if __name__ == "__main__":
    sys.exit(main())
