"""The training scripts' command line: one-line errors for every script, their flags, their defaults.

    Parser              argparse, but a bad value is one line naming it and exit status 2
    Failure, edge       the same for errors found after parsing: library code raises a Failure, a
                        script's main turns it into its one line and exit status (with edge())
    training_parser     the flags of train_mnist.py / train_cifar.py; defaults are the report's,
                        per dataset (catalog.py), and each loss's (the registry of losses.py)
    parse               parse, fill in the defaults, validate: (args, config)

run_all.sh's options are grid_cli.py's.

Standard library only: run_all.sh resolves every cell's configuration, and so its run name and
whether it has finished, without starting torch.
"""
import argparse
import contextlib
import hashlib
import math
import os
import re
import sys

import catalog
import loss_specs
import results

# Flags that change how fast a run goes or where files go, never its numbers: not part of the
# run's identity, so a run can be resumed with a different --device or --out.
RUNTIME_FLAGS = {"device", "out", "data_dir", "download", "prepare_data", "resume", "force", "compile",
                 "save_model", "noise_file"}  # noise_file: where the file is (config.json records its SHA-256)


class Parser(argparse.ArgumentParser):
    """Bad input: one line naming the value and what is allowed, exit status 2 (no usage dump). An
    empty value ('--out ""') is bad input too, unless empty is the option's default: it would
    otherwise read as the default, or as the current folder."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def parse_known_args(self, args=None, namespace=None):
        found, rest = super().parse_known_args(args, namespace)
        for action in self._actions:
            if action.option_strings and getattr(found, action.dest, None) == "" and action.default != "":
                self.error(f"{action.option_strings[0]} '' is not allowed (empty)")
        return found, rest


def whole_number(text):
    """int(text) for ASCII digits only, else None: str.isdigit() also says yes to '²', which int() rejects,
    and to '٣', which it reads as 3."""
    return int(text) if isinstance(text, str) and re.fullmatch("[0-9]+", text) else None


class Failure(Exception):
    """An error found after parsing: its one line (the message) and the exit status it ends a script
    with; 2 for bad input (the default), 1 for a failure, 3 for unavailable data, 130 interrupted."""

    def __init__(self, message, code=2):
        super().__init__(message)
        self.code = code


@contextlib.contextmanager
def edge():
    """A script's main runs under it (`@cli.edge()` above `def main`): a Failure raised anywhere below
    becomes `error: <message>` on stderr and the exit status. The one place a library error ends
    the process."""
    try:
        yield
    except Failure as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(e.code) from None


def per_dataset(script, key):
    """'mnist 20, fashion-mnist 20': the report's value of `key` for each dataset of `script`."""
    values = [f"{d} {' '.join(map(str, v)) if isinstance(v, list) else v}"
              for d in catalog.scripts_datasets(script)
              if (v := catalog.DATASETS[d]["settings"].get(key)) is not None]
    return ", ".join(values)


def training_parser(script, doc=None):
    """The flags of `script` (train_mnist.py or train_cifar.py); None defaults are resolved by parse."""
    datasets = catalog.scripts_datasets(script)
    losses, params = loss_specs.read()
    p = Parser(prog=script, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("experiment (what the grid sweeps)")
    g.add_argument("--dataset", choices=datasets, default=datasets[0], help="dataset (default: %(default)s)")
    g.add_argument("--loss", default="ce", metavar="NAME",
                   help=f"training loss (default: %(default)s), one of: {loss_specs.describe(losses, params)}")
    for name, meta in params.items():
        if "wrapper" in meta:  # every loss takes it, off by default
            g.add_argument(f"--{name.replace('_', '-')}", type=float,
                           help=f"{meta['help']}, in {meta['range']} (default: off)")
            continue
        # a peer loss's value on each dataset (catalog.py: peers); any other loss's default, and the
        # report's value where it differs per dataset
        peers = [loss for loss in losses if any(name in catalog.DATASETS[d]["peers"].get(loss, {})
                                                for d in datasets)]
        takes = ", ".join(f"{loss} {d[name]:g}" for loss, d in losses.items() if name in d and loss not in peers)
        report = "; ".join(f"{loss} {v:g} on {dataset}" for dataset in datasets for loss in losses if loss not in peers
                           and (v := catalog.loss_defaults(dataset, loss).get(name, losses[loss].get(name)))
                           is not None and v != losses[loss].get(name))
        authors = "; ".join(f"{loss} " + ", ".join(  # a dataset without the authors' value: the loss's own
            f"{catalog.loss_defaults(d, loss).get(name, losses[loss][name]):g} on {d}" for d in datasets)
            for loss in peers)
        default = "; ".join(filter(None, (
            takes and f"the loss's: {takes}", report and f"the report's {report}", authors and "per dataset, as their "
            f"authors' official configs set them (HanxunH/Active-Passive-Losses configs/; docs/peer-losses.md): {authors}")))
        g.add_argument(f"--{name.replace('_', '-')}", type=float,
                       help=f"{meta['help']}, in {meta['range']} (default: {default})")
    g.add_argument("--clip-norm", type=float, help="clip gradients to this L2 norm; 0.1 is the paper's "
                   "'CE + clipping' (default: no clipping)")
    g.add_argument("--clip-mode", choices=["global", "per-example"], default="global",
                   help="global: clip the mini-batch gradient (the paper's); per-example: clip each "
                   "sample's gradient before averaging (default: %(default)s)")
    g.add_argument("--rho", type=float, help="label flip probability, in [0, 1); with --noise instance the mean "
                   "of the per-sample rates; not with --noise human (default: 0)")
    g.add_argument("--noise", choices=["symmetric", "asymmetric", "instance"] + (["human"] if script == "train_cifar.py"
                                                                                else []), default="symmetric",
                   help="symmetric: flip to one of the other K-1 classes uniformly (the paper's); "
                   "asymmetric: flip along the dataset's class map; instance: Xia et al. (2020)'s instance-dependent "
                   "noise" + ("; human: the CIFAR-10N / CIFAR-100N annotators' labels (Wei et al., 2022) from "
                              "--noise-file" if script == "train_cifar.py" else "") + " (default: %(default)s)")
    g.add_argument("--noise-features", choices=["raw", "normalised"],
                   help="--noise instance: what Xia et al.'s generator multiplies by its random matrix. raw: the "
                   "pixel values 0-255, flattened (their code's); normalised: the images as the network sees them "
                   "(default: raw; docs/noise.md)")
    if script == "train_cifar.py":
        g.add_argument("--noise-key", help="--noise human: the label set of the file; "
                       + "; ".join(f"{d}: {', '.join(v['keys'])} (or the official code's names: "
                                   f"{', '.join(v['aliases'])})" for d, v in catalog.HUMAN_NOISE.items()) + " (default: "
                       + ", ".join(f"{d} {v['default']}" for d, v in catalog.HUMAN_NOISE.items()) + ")")
        g.add_argument("--noise-file", help="--noise human: the CIFAR-N label file (default: "
                       + ", ".join(f"DATA_DIR/{v['file']} for {d}" for d, v in catalog.HUMAN_NOISE.items()) + ")")
    g.add_argument("--noise-seed", type=int, default=0,
                   help="seed of the label noise, the same for all trials as in the paper (default: %(default)s)")
    g.add_argument("--seed", type=int, default=0, help="trial seed: initialisation, data order, "
                   "augmentation (default: %(default)s)")
    g.add_argument("--val-split", type=float, default=0.0, help="fraction of the noisy training set held "
                   "out (labels stay noisy) and evaluated every epoch, in [0, 1) (default: %(default)s)")
    g = p.add_argument_group("optimisation (defaults: the report's, per dataset)")
    g.add_argument("--epochs", type=int, help=f"epochs (default: {per_dataset(script, 'epochs')})")
    g.add_argument("--batch-size", type=int, help=f"batch size (default: {per_dataset(script, 'batch_size')})")
    g.add_argument("--lr", type=float, help=f"initial learning rate (default: {per_dataset(script, 'lr')})")
    g.add_argument("--weight-decay", type=float,
                   help=f"L2 weight decay (default: {per_dataset(script, 'weight_decay')})")
    if script == "train_mnist.py":
        g.add_argument("--init", choices=["report", "authors-code"], default="report",
                       help="LeNet initialisation. report: weights from a normal with std 0.1 truncated at 2 std, "
                       "zero biases (the report's words); authors-code: weights from a standard normal truncated "
                       "to +-0.2 (about uniform, std 0.115) and PyTorch's default biases (the report authors' "
                       "code) (default: %(default)s)")
        g.add_argument("--lr-decay", type=float, help="learning-rate factor per --lr-decay-steps iterations, "
                       f"applied smoothly every iteration; 1 keeps it constant (default: {per_dataset(script, 'lr_decay')})")
        g.add_argument("--lr-decay-steps", type=float, help="iterations over which the learning rate decays "
                       f"by --lr-decay (default: {per_dataset(script, 'lr_decay_steps')})")
    else:
        g.add_argument("--model", choices=["resnet50", "resnet18"],
                       help="network; resnet18 is a cheaper stand-in, not the report's (default: resnet50)")
        g.add_argument("--momentum", type=float, help=f"Nesterov momentum (default: {per_dataset(script, 'momentum')})")
        g.add_argument("--milestones", type=int, nargs="*", help="epochs after which the learning rate is "
                       f"multiplied by --lr-gamma (default: {per_dataset(script, 'milestones')})")
        g.add_argument("--lr-gamma", type=float,
                       help=f"learning-rate factor at each milestone (default: {per_dataset(script, 'lr_gamma')})")
    g = p.add_argument_group("run scale, hardware and files")
    g.add_argument("--limit-train", type=int, help="train on the first N training samples only (smoke runs)")
    g.add_argument("--limit-test", type=int, help="evaluate on the first N test samples only (smoke runs)")
    entries = [catalog.DATASETS[d] for d in datasets]
    folders = " or ".join(e["folder"] + ("/raw/" if e["format"] == "idx" else "/") for e in entries)
    g.add_argument("--data-dir", default="data", help=f"dataset folder: {folders} (torchvision's layout)" + (
        ", or the four IDX files themselves" if script == "train_mnist.py" else ", and the CIFAR-N label files for "
        "--noise human") + " (default: %(default)s)")
    g.add_argument("--download", action="store_true", help="fetch the dataset with torchvision first")
    g.add_argument("--prepare-data", action="store_true",
                   help="only load (downloading if needed) and describe the dataset, then exit")
    g.add_argument("--out", default="results", help="results folder (default: %(default)s)")
    g.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    g.add_argument("--amp", choices=["fp16", "bf16"], help="mixed precision. fp16: float16 autocast with a "
                   "gradient scaler, as the report trained its ResNets (Micikevicius et al.); bf16: bfloat16 "
                   "autocast, no scaler (a deviation, usually as accurate) (default: off, float32)")
    g.add_argument("--channels-last", action="store_true", help="channels-last memory format (faster convs on GPUs)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoint")
    g.add_argument("--force", action="store_true", help="re-run even if this configuration has finished")
    g.add_argument("--save-model", action="store_true", help="keep the final weights as model.pt in the run folder")
    return p


def parse(script, argv=None, doc=None):
    """Parse `script`'s flags, fill in the defaults and validate them (one line and exit 2 if bad).

    Returns (args, config): config holds every setting that defines the run (sorted; the loss's
    parameter defaults and the dataset's report settings filled in), args also the runtime flags.
    """
    parser = training_parser(script, doc)
    args = parser.parse_args(argv)
    settings = catalog.DATASETS[args.dataset]["settings"]
    for key, value in settings.items():  # the report's values, unless given
        if getattr(args, key, value) is None:
            setattr(args, key, value)
    if script == "train_mnist.py":
        args.model = settings["model"]
    check(parser, args)
    config = {k: v for k, v in sorted(vars(args).items()) if k not in RUNTIME_FLAGS}
    return args, config


def check(parser, args):
    """Reject bad values with one line naming the value and what is allowed; fill loss defaults."""
    def bad(flag, value, allowed):
        parser.error(f"{flag} {value!r} is not allowed: {allowed}")
    losses, params = loss_specs.read()
    if args.loss not in losses:
        bad("--loss", args.loss, f"valid losses are {loss_specs.describe(losses, params)}")
    given = {k for k in params if getattr(args, k) is not None}
    if given - set(losses[args.loss]):
        takes = ", ".join(k for k in losses[args.loss] if "wrapper" not in params[k]) or "no parameters"
        parser.error(f"loss {args.loss!r} does not take {', '.join(sorted(given - set(losses[args.loss])))}: "
                     f"it takes {takes}")
    # the effective parameters are part of the run's identity: the report's for the dataset where it
    # set them (tau = 2 for PHuber-CE on CIFAR-10), else the loss's defaults
    defaults = {**losses[args.loss], **catalog.loss_defaults(args.dataset, args.loss)}
    for name in params:
        value = defaults.get(name) if getattr(args, name) is None else getattr(args, name)
        if name in losses[args.loss] and value is not None:
            try:
                value = loss_specs.check(name, value, params[name]["range"])
            except ValueError as e:
                parser.error(str(e))
        setattr(args, name, value)
    for flag in ("seed", "noise_seed"):  # torch's generators take seeds below 2^63
        if not 0 <= getattr(args, flag) < 2 ** 63:
            bad("--" + flag.replace("_", "-"), getattr(args, flag), "seeds are integers in [0, 2^63)")
    check_noise(parser, args)
    if not 0 <= args.val_split < 1:
        bad("--val-split", args.val_split, "the held-out fraction must be in [0, 1)")
    for flag in ("epochs", "batch_size", "limit_train", "limit_test"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            bad("--" + flag.replace("_", "-"), value, "must be at least 1")
    if not 0 < args.lr < math.inf:
        bad("--lr", args.lr, "the learning rate must be a finite number > 0")
    if not 0 <= args.weight_decay < math.inf:
        bad("--weight-decay", args.weight_decay, "the weight decay must be a finite number >= 0")
    if args.clip_norm is not None and not 0 < args.clip_norm < math.inf:
        bad("--clip-norm", args.clip_norm, "the clipping threshold must be a finite number > 0")
    if args.clip_mode == "per-example":
        if args.clip_norm is None:
            bad("--clip-mode", args.clip_mode, "per-example clipping needs --clip-norm")
        if args.amp == "fp16":
            bad("--amp", args.amp, "per-example clipping supports --amp bf16 or float32 (no gradient scaler)")
    if catalog.optimiser(args.dataset) == "adam":
        if not (0 < args.lr_decay <= 1 and 0 < args.lr_decay_steps < math.inf):
            parser.error(f"--lr-decay {args.lr_decay} / --lr-decay-steps {args.lr_decay_steps} are not allowed: "
                         "the decay must be in (0, 1] and the steps > 0")
    elif not (0 < args.momentum < math.inf and 0 < args.lr_gamma <= 1 and args.milestones == sorted(args.milestones)):
        parser.error(f"--momentum {args.momentum} / --lr-gamma {args.lr_gamma} / --milestones "
                     f"{args.milestones} are not allowed: momentum > 0, gamma in (0, 1], milestones ascending")


def check_noise(parser, args):
    """--rho for every noise but human; the CIFAR-N key (and its default) for human noise only; the
    features (and their default) for instance noise only."""
    human = args.noise == "human"
    if human and args.rho is not None:
        parser.error(f"--rho {args.rho} is not allowed with --noise human: the noise is the annotators' (--noise-key)")
    if not human and args.rho is None:
        args.rho = 0.0
    if not human and not 0 <= args.rho < 1:
        parser.error(f"--rho {args.rho!r} is not allowed: the flip probability must be in [0, 1)")
    for flag in ("noise_key", "noise_file"):
        value = getattr(args, flag, None)
        if value is not None and (not human or not value):
            parser.error(f"--{flag.replace('_', '-')} {value!r} is not allowed " + ("without --noise human" if value
                                                                                     else "(empty)"))
    if args.noise_features is not None and args.noise != "instance":
        parser.error(f"--noise-features {args.noise_features!r} is not allowed without --noise instance")
    if args.noise == "instance":  # part of the run's identity for instance noise only: None otherwise
        args.noise_features = args.noise_features or "raw"
    if human and args.dataset not in catalog.HUMAN_NOISE:
        parser.error(f"--noise human is not allowed with --dataset {args.dataset}: it has no CIFAR-N label file "
                     f"(those of {', '.join(catalog.HUMAN_NOISE)})")
    if human:
        spec = catalog.HUMAN_NOISE[args.dataset]
        # the official code's name is the same run as the file's key it stands for
        args.noise_key = spec["aliases"].get(args.noise_key, args.noise_key or spec["default"])
        if args.noise_key not in spec["keys"]:
            parser.error(f"--noise-key {args.noise_key!r} is not allowed: {args.dataset}'s CIFAR-N file has "
                         f"{', '.join(spec['keys'])} (or {', '.join(spec['aliases'])}); clean labels: --rho 0")
        args.noise_file = args.noise_file or os.path.join(args.data_dir, spec["file"])
        args.noise_file_sha256 = file_sha256(args.noise_file)  # the labels are part of the run's identity


def file_sha256(path):
    """The SHA-256 of a regular file, or None for anything else (the data loader then says why, in one
    line): a FIFO or a device would block or never end. The run checks that the bytes it parses have it."""
    try:
        with results.open_regular(path) as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except (OSError, results.BadFile):
        return None


def python():
    return os.environ.get("PYTHON", sys.executable)
