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
import math
import os
import sys
import time

import torch

import data
import errors
import losses
import models
import results
import training
from config import parse

SCRIPT = os.path.basename(__file__)


@errors.edge()  # a Failure raised below: its one line on stderr and its exit status
def main(argv=None):
    # 1. The config: every flag resolved, the report's settings for the dataset filled in (config.py).
    config = parse(SCRIPT, argv, __doc__)
    device = training.device_for(config)
    if config.prepare_data:
        return data.describe(config)
    run = training.RunFolder(config)  # results/runs/<name>: skipped if finished, resumed if interrupted
    if run.finished():
        return 0

    # 2. The data, with label noise applied once to the training labels, on the device.
    d = data.prepare(config, device)
    torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its fastest kernels

    # 3. The model, the loss, the optimiser and the schedule: SGD with Nesterov momentum, the learning
    # rate multiplied by lr_gamma at each milestone epoch, evaluated every iteration (report section 5.2).
    torch.manual_seed(config.seed)
    layout = torch.channels_last if config.channels_last else torch.preserve_format
    net = models.make_model(config.model, d.classes, d.channels).to(device, memory_format=layout)
    criterion = losses.make_loss(config.loss, check_targets=False, **config.loss_params())  # labels checked once
    optimizer = torch.optim.SGD(net.parameters(), lr=config.lr, momentum=config.momentum, nesterov=True,
                                weight_decay=config.weight_decay, fused=training.fused(device, config.compile))
    steps = math.ceil(len(d.train_y) / config.batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: config.lr_gamma ** bisect.bisect_right(config.milestones, step // steps))
    learner = training.Learner(net, criterion, optimizer, schedule, config)
    generator = torch.Generator(device).manual_seed(config.seed)  # the data order and the augmentation

    # 4. The epoch loop: train with random crops and flips, evaluate (the test set never chooses
    # anything), write the row, checkpoint.
    with run.training(learner, d, generator):
        for epoch in run.epochs():
            t0 = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            stats = training.train_epoch(learner, d, generator, batch_size=config.batch_size, augment=True,
                                         epoch=epoch)
            train_seconds = time.perf_counter() - t0
            test = training.evaluate(learner, d.test_x, d.test_y, d.mean, d.std)
            val = training.evaluate(learner, d.val_x, d.val_y, d.mean, d.std, clean=d.val_clean)
            run.end_epoch(results.epoch_row(stats, test, val, epoch=epoch, steps=steps, lr=lr,
                                             train_seconds=train_seconds, seconds=time.perf_counter() - t0))
        # 5. The final row: the last epoch's, in results/summary.csv.
        run.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
