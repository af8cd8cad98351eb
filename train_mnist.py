"""LeNet-5 on MNIST with noisy labels: one cell of Table 1 / Figure 2 of the report (section 5.1).

    python train_mnist.py --loss phuber_ce --rho 0.4 --seed 1

trains the report's LeNet-5 for 20 epochs with Adam (lr 1e-3, weight decay 1e-3, batch 32, learning
rate 1e-3 * 0.1^(n/10000) at iteration n) on MNIST whose training labels were flipped with
probability 0.4 (noise seed 0, as for every trial), and adds the final test accuracy to
results/summary.csv; the per-epoch curves go to results/runs/<run>/epochs.csv. The report gets
98.5 +- 0.1 % for this cell. About 2 minutes on a GPU, 5 minutes on a 2-core CPU.

Table 1 is the grid --loss {ce, linear, gce, phuber_ce, phuber_gce}, plus --loss ce --clip-norm 0.1,
times --rho {0, 0.2, 0.4, 0.6} times --seed {0, 1, 2}: `bash run_all.sh --datasets mnist`.
Offline, on real data: --dataset fashion-mnist --data-dir /usr/share/datasets/fashion-mnist (the
folder Debian's dataset-fashion-mnist package installs).
"""
import sys

import torch

import training


def build_parser():
    p = training.make_parser(__doc__, ["mnist", "fashion-mnist"], epochs=20, batch_size=32, lr=1e-3,
                             weight_decay=1e-3)
    p.add_argument("--lr-decay", type=float, default=0.1,
                   help="learning-rate factor per --lr-decay-steps iterations, applied smoothly every "
                   "iteration (default: %(default)s)")
    p.add_argument("--lr-decay-steps", type=float, default=10000,
                   help="iterations over which the learning rate decays by --lr-decay (default: %(default)s)")
    return p


def make_optimizer(params, args):
    return torch.optim.Adam(params, lr=args.lr, weight_decay=args.weight_decay)


def lr_factor(args, steps_per_epoch):
    """TensorFlow's exponential_decay without staircase: lr_n = lr * decay^(n / decay_steps)."""
    return lambda step: args.lr_decay ** (step / args.lr_decay_steps)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (0 < args.lr_decay <= 1 and args.lr_decay_steps > 0):
        parser.error(f"--lr-decay {args.lr_decay} / --lr-decay-steps {args.lr_decay_steps} are not allowed: "
                     "the decay must be in (0, 1] and the steps > 0")
    args.model = "lenet"
    return training.run(args, parser, make_optimizer, lr_factor, augment=False)


if __name__ == "__main__":
    sys.exit(main())
