"""A training run's configuration: one frozen dataclass, built by one parser (standard library only).

    Config      every flag of train_mnist.py / train_cifar.py, resolved: the report's settings for the
                dataset (catalog.DATASETS) and the loss's parameter defaults (catalog.LOSSES) filled in
    parse       argv -> Config; a bad value is one line naming it and exit status 2
    parser      the flags of one script, with their help

Every tool that reads training flags goes through parse: the scripts, run_all.sh's grid (a cell's run
name, time estimate, data and device), SLURM, the GPU check and the benchmark. Torch-free, so that
run_all.sh resolves every cell, and so whether it has finished, without starting torch.
"""
import argparse
import dataclasses
import hashlib
import math
import os
import sys

import catalog
import results
from errors import Parser

SCRIPTS = tuple(catalog.SCRIPTS)
# Flags that change how fast a run goes or where files go, never its numbers: not part of the run's
# identity, so a run can be resumed with a different --device or --out.
RUNTIME = ("data_dir", "download", "prepare_data", "out", "device", "compile", "resume", "force", "save_model",
           "noise_file")  # noise_file: where the file is (the settings record its SHA-256)


@dataclasses.dataclass(frozen=True)
class Config:
    """One run, every field resolved. `settings()` is what names it (results.run_name) and what
    config.json and the summary row record; the fields in RUNTIME are not part of it."""
    script: str
    dataset: str
    loss: str
    tau: float = None
    q: float = None
    alpha: float = None
    beta: float = None
    A: float = None
    logit_clip: float = None
    clip_norm: float = None
    clip_mode: str = "global"
    rho: float = None
    noise: str = "symmetric"
    noise_features: str = None
    noise_key: str = None
    noise_file_sha256: str = None
    noise_seed: int = 0
    seed: int = 0
    val_split: float = 0.0
    model: str = None
    epochs: int = None
    batch_size: int = None
    lr: float = None
    weight_decay: float = None
    init: str = None                # train_mnist.py
    lr_decay: float = None
    lr_decay_steps: float = None
    momentum: float = None          # train_cifar.py
    milestones: tuple = None
    lr_gamma: float = None
    limit_train: int = None
    limit_test: int = None
    amp: str = None
    channels_last: bool = False
    data_dir: str = "data"
    download: bool = False
    prepare_data: bool = False
    out: str = "results"
    device: str = None
    compile: bool = False
    resume: bool = False
    force: bool = False
    save_model: bool = False
    noise_file: str = None
    keys: tuple = dataclasses.field(default=(), repr=False)  # the settings' names: the script's flags

    def settings(self):
        """{name: value} of every setting, sorted: what names the run (milestones as a list, as JSON has it)."""
        values = {k: getattr(self, k) for k in sorted(self.keys)}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}

    def loss_params(self):
        """The loss's parameters, as losses.make_loss takes them (None: not taken, or off)."""
        return {k: getattr(self, k) for k in catalog.PARAMS}


# A parameter added to catalog.PARAMS (a new loss's, docs/adding-a-loss.md) is a field too, without an edit here.
_NEW_PARAMS = [(name, float, None) for name in catalog.PARAMS if name not in Config.__dataclass_fields__]
if _NEW_PARAMS:
    Config = dataclasses.make_dataclass("Config", _NEW_PARAMS, bases=(Config,), frozen=True,
                                        namespace={"__module__": __name__})


def per_dataset(script, key):
    """'mnist 20, fashion-mnist 20': the report's value of `key` for each dataset of `script`."""
    return ", ".join(f"{d} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                     for d in catalog.scripts_datasets(script)
                     if (v := catalog.DATASETS[d]["settings"].get(key)) is not None)


def param_help(name, datasets):
    """--tau's help: where its default comes from, for each loss that takes it."""
    meta = catalog.PARAMS[name]
    if name in catalog.WRAPPERS:
        return f"{meta['help']}, in {meta['range']} (default: off)"
    takes = [loss for loss, d in catalog.LOSSES.items() if name in d]
    peers = [loss for loss in takes if any(name in catalog.DATASETS[d]["peers"].get(loss, {}) for d in datasets)]
    own = ", ".join(f"{loss} {catalog.LOSSES[loss][name]:g}" for loss in takes if loss not in peers)
    report = "; ".join(f"{loss} {v:g} on {d}" for d in datasets for loss in takes if loss not in peers
                       and (v := catalog.loss_defaults(d, loss).get(name, catalog.LOSSES[loss][name]))
                       != catalog.LOSSES[loss][name])
    authors = "; ".join(f"{loss} " + ", ".join(f"{catalog.loss_defaults(d, loss).get(name, catalog.LOSSES[loss][name]):g}"
                                               f" on {d}" for d in datasets) for loss in peers)
    default = "; ".join(filter(None, (
        own and f"the loss's: {own}", report and f"the report's {report}", authors and "per dataset, as their authors' "
        f"official configs set them (HanxunH/Active-Passive-Losses configs/; docs/peer-losses.md): {authors}")))
    return f"{meta['help']}, in {meta['range']} (default: {default})"


def parser(script, doc=None):
    """The flags of `script` (train_mnist.py or train_cifar.py); None defaults are resolved by parse."""
    mnist, datasets = script == "train_mnist.py", catalog.scripts_datasets(script)
    p = Parser(prog=script, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("experiment (what the grid sweeps)")
    g.add_argument("--dataset", choices=datasets, default=datasets[0], help="dataset (default: %(default)s)")
    g.add_argument("--loss", default="ce", metavar="NAME",
                   help=f"training loss (default: %(default)s), one of: {catalog.describe_losses()}")
    for name in catalog.PARAMS:
        g.add_argument(f"--{name.replace('_', '-')}", type=float, help=param_help(name, datasets))
    g.add_argument("--clip-norm", type=float, help="clip gradients to this L2 norm; 0.1 is the paper's "
                   "'CE + clipping' (default: no clipping)")
    g.add_argument("--clip-mode", choices=["global", "per-example"], default="global",
                   help="global: clip the mini-batch gradient (the paper's); per-example: clip each "
                   "sample's gradient before averaging (default: %(default)s)")
    g.add_argument("--rho", type=float, help="label flip probability, in [0, 1); with --noise instance the mean "
                   "of the per-sample rates; not with --noise human (default: 0)")
    g.add_argument("--noise", choices=["symmetric", "asymmetric", "instance"] + ([] if mnist else ["human"]),
                   default="symmetric", help="symmetric: flip to one of the other K-1 classes uniformly (the "
                   "paper's); asymmetric: flip along the dataset's class map; instance: Xia et al. (2020)'s "
                   "instance-dependent noise" + ("" if mnist else "; human: the CIFAR-10N / CIFAR-100N annotators' "
                                                 "labels (Wei et al., 2022) from --noise-file") + " (default: %(default)s)")
    g.add_argument("--noise-features", choices=["raw", "normalised"],
                   help="--noise instance: what Xia et al.'s generator multiplies by its random matrix. raw: the "
                   "pixel values 0-255, flattened (their code's); normalised: the images as the network sees them "
                   "(default: raw; docs/noise.md)")
    if not mnist:
        human = catalog.HUMAN_NOISE.items()
        g.add_argument("--noise-key", help="--noise human: the label set of the file; " + "; ".join(
            f"{d}: {', '.join(v['keys'])} (or the official code's names: {', '.join(v['aliases'])})" for d, v in human)
            + " (default: " + ", ".join(f"{d} {v['default']}" for d, v in human) + ")")
        g.add_argument("--noise-file", help="--noise human: the CIFAR-N label file (default: "
                       + ", ".join(f"DATA_DIR/{v['file']} for {d}" for d, v in human) + ")")
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
    if mnist:
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
    folders = " or ".join(catalog.DATASETS[d]["folder"] + ("/raw/" if catalog.DATASETS[d]["format"] == "idx" else "/")
                          for d in datasets)
    g.add_argument("--data-dir", default="data", help=f"dataset folder: {folders} (torchvision's layout)" + (
        ", or the four IDX files themselves" if mnist else ", and the CIFAR-N label files for --noise human")
        + " (default: %(default)s)")
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
    """The Config of `script` run with `argv` (default: sys.argv[1:]): the report's settings for the
    dataset and the loss's defaults filled in, every value checked (one line and exit status 2 if bad)."""
    p = parser(script, doc)
    args = p.parse_args(argv)
    settings = catalog.DATASETS[args.dataset]["settings"]
    for key, value in settings.items():  # the report's values, unless given
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    try:
        fill_loss(args)
        check(args)
        check_noise(args)
    except ValueError as e:
        p.error(str(e))
    keys = {k for k in vars(args) if k not in RUNTIME}
    if getattr(args, "milestones", None) is not None:
        args.milestones = tuple(args.milestones)
    return Config(script=script, keys=tuple(sorted(keys)), **vars(args))


def fill_loss(args):
    """Each loss parameter: its value, or its default where the loss takes it (the report's for the
    dataset where it set one, as tau = 2 for PHuber-CE on CIFAR-10, else the loss's), else None."""
    if args.loss not in catalog.LOSSES:
        raise ValueError(f"--loss {args.loss!r} is not allowed: valid losses are {catalog.describe_losses()}")
    takes = {**catalog.LOSSES[args.loss], **catalog.WRAPPERS}
    given = sorted(k for k in catalog.PARAMS if getattr(args, k) is not None and k not in takes)
    if given:
        raise ValueError(f"loss {args.loss!r} does not take {', '.join(given)}: it takes "
                         f"{', '.join(catalog.LOSSES[args.loss]) or 'no parameters'}")
    defaults = {**takes, **catalog.loss_defaults(args.dataset, args.loss)}
    for name in catalog.PARAMS:
        value = defaults.get(name) if getattr(args, name) is None else getattr(args, name)
        setattr(args, name, None if value is None else catalog.check_param(name, value))


def bad(flag, value, allowed):
    return ValueError(f"{flag} {value!r} is not allowed: {allowed}")


def check(args):
    """ValueError naming the first bad value and what is allowed."""
    for flag in ("seed", "noise_seed"):  # torch's generators take seeds below 2^63
        if not 0 <= getattr(args, flag) < 2 ** 63:
            raise bad("--" + flag.replace("_", "-"), getattr(args, flag), "seeds are integers in [0, 2^63)")
    if not 0 <= args.val_split < 1:
        raise bad("--val-split", args.val_split, "the held-out fraction must be in [0, 1)")
    for flag in ("epochs", "batch_size", "limit_train", "limit_test"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise bad("--" + flag.replace("_", "-"), value, "must be at least 1")
    if not 0 < args.lr < math.inf:
        raise bad("--lr", args.lr, "the learning rate must be a finite number > 0")
    if not 0 <= args.weight_decay < math.inf:
        raise bad("--weight-decay", args.weight_decay, "the weight decay must be a finite number >= 0")
    if args.clip_norm is not None and not 0 < args.clip_norm < math.inf:
        raise bad("--clip-norm", args.clip_norm, "the clipping threshold must be a finite number > 0")
    if args.clip_mode == "per-example":
        if args.clip_norm is None:
            raise bad("--clip-mode", args.clip_mode, "per-example clipping needs --clip-norm")
        if args.amp == "fp16":
            raise bad("--amp", args.amp, "per-example clipping supports --amp bf16 or float32 (no gradient scaler)")
    if hasattr(args, "lr_decay"):
        if not (0 < args.lr_decay <= 1 and 0 < args.lr_decay_steps < math.inf):
            raise ValueError(f"--lr-decay {args.lr_decay} / --lr-decay-steps {args.lr_decay_steps} are not allowed: "
                             "the decay must be in (0, 1] and the steps > 0")
    elif not (0 < args.momentum < math.inf and 0 < args.lr_gamma <= 1 and args.milestones == sorted(args.milestones)):
        raise ValueError(f"--momentum {args.momentum} / --lr-gamma {args.lr_gamma} / --milestones "
                         f"{args.milestones} are not allowed: momentum > 0, gamma in (0, 1], milestones ascending")


def check_noise(args):
    """--rho for every noise but human; the CIFAR-N key (and its default) for human noise only; the
    features (and their default) for instance noise only."""
    human = args.noise == "human"
    if human and args.rho is not None:
        raise ValueError(f"--rho {args.rho} is not allowed with --noise human: the noise is the annotators' "
                         "(--noise-key)")
    if not human and args.rho is None:
        args.rho = 0.0
    if not human and not 0 <= args.rho < 1:
        raise ValueError(f"--rho {args.rho!r} is not allowed: the flip probability must be in [0, 1)")
    for flag in ("noise_key", "noise_file"):
        value = getattr(args, flag, None)
        if value is not None and (not human or not value):
            raise ValueError(f"--{flag.replace('_', '-')} {value!r} is not allowed "
                             + ("without --noise human" if value else "(empty)"))
    if args.noise_features is not None and args.noise != "instance":
        raise ValueError(f"--noise-features {args.noise_features!r} is not allowed without --noise instance")
    if args.noise == "instance":  # part of the run's identity for instance noise only: None otherwise
        args.noise_features = args.noise_features or "raw"
    if human and args.dataset not in catalog.HUMAN_NOISE:
        raise ValueError(f"--noise human is not allowed with --dataset {args.dataset}: it has no CIFAR-N label file "
                         f"(those of {', '.join(catalog.HUMAN_NOISE)})")
    if human:
        spec = catalog.HUMAN_NOISE[args.dataset]
        # the official code's name is the same run as the file's key it stands for
        args.noise_key = spec["aliases"].get(args.noise_key, args.noise_key or spec["default"])
        if args.noise_key not in spec["keys"]:
            raise ValueError(f"--noise-key {args.noise_key!r} is not allowed: {args.dataset}'s CIFAR-N file has "
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
    """The interpreter that runs the scripts' processes: $PYTHON (run_all.sh's), else this one."""
    return os.environ.get("PYTHON", sys.executable)
