"""LeNet-5 on MNIST with noisy labels: one cell of Table 1 / Figure 2 of the report (section 5.1).

    python train_mnist.py --loss phuber_ce --rho 0.4 --seed 1

trains the report's LeNet-5 for 20 epochs with Adam (lr 1e-3, weight decay 1e-3, batch 32, learning
rate 1e-3 * 0.1^(n/10000) at iteration n) on MNIST whose training labels were flipped with
probability 0.4 (noise seed 0, as for every trial), and adds the final test accuracy to
results/summary.csv; the per-epoch curves go to results/runs/<run>/epochs.csv. The report gets
98.5 +- 0.1 % for this cell. About 2 minutes on a GPU, 3 minutes on a 2-core CPU.

Table 1 is the grid --loss {ce, linear, gce, phuber_ce, phuber_gce}, plus --loss ce --clip-norm 0.1,
times --rho {0, 0.2, 0.4, 0.6} times --seed {0, 1, 2}: `bash run_all.sh --datasets mnist`.
Offline, on real data: --dataset fashion-mnist --data-dir /usr/share/datasets/fashion-mnist (the
folder Debian's dataset-fashion-mnist package installs).
"""
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

    # 3. The model, the loss, the optimiser and the schedule: Adam with TensorFlow's exponential_decay
    # without staircase, lr_n = lr * decay^(n / decay_steps) at iteration n (report section 5.1).
    torch.manual_seed(config.seed)
    layout = torch.channels_last if config.channels_last else torch.preserve_format
    net = models.make_model(config.model, d.classes, d.channels, config.init).to(device, memory_format=layout)
    criterion = losses.make_loss(config.loss, check_targets=False, **config.loss_params())  # labels checked once
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                 fused=training.fused(device, config.compile))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: config.lr_decay ** (step / config.lr_decay_steps))
    learner = training.Learner(net, criterion, optimizer, schedule, config)
    generator = torch.Generator(device).manual_seed(config.seed)  # the data order

    # 4. The epoch loop: train, evaluate (the test set never chooses anything), write the row, checkpoint.
    steps = math.ceil(len(d.train_y) / config.batch_size)
    with run.training(learner, d, generator):
        for epoch in run.epochs():
            t0 = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            stats = training.train_epoch(learner, d, generator, batch_size=config.batch_size, augment=False,
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
