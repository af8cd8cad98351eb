"""The project's tables: every dataset and every loss parameter, literal (standard library only).

Every module reads what it needs of a dataset or a loss's parameters here, and nowhere else: data.py
a dataset's files, classes, flip map and torchvision class; config.py its training script, the
report's settings and a single run's loss defaults; grid.py the report's table rows, sizes and
timings, and the studies a dataset is in. Adding a dataset is adding its entry to DATASETS
(docs/adding-a-loss.md); importing this module checks every entry and names, in one line, the
dataset and what its entry lacks.

    PARAMS, LOSSES   every loss parameter (range, help, symbols), and each loss's parameters with their
                     defaults: what its function in losses.py takes (test_catalog.py checks the two agree)
    check_param, describe_losses   a parameter's range check; one line naming every loss
    DATASETS      name -> entry (the keys an entry takes: FIELDS)
    SCRIPTS       each training script's optimiser family and the settings it takes
    REPORT_LOSSES the parameters the report sets for its losses, which every entry gives
    scripts_datasets, loss_defaults   what the other modules ask of the table
    DEFAULT_GRID, TABLE3_DATASETS, MEMORISATION, TUNE_STUDY, BENCH   the datasets of each study, in its order
"""
import numbers

from errors import Failure

# Every parameter a loss can take: allowed interval, what it is (the --help text of its flag) and its
# symbol in tables. Each is parsed as a float (--tau 10 reads 10.0).
PARAMS = {
    "tau": {"range": "(1, inf)", "help": "partially Huberised threshold", "symbol": "τ", "tex": r"$\tau$"},
    "q": {"range": "(0, 1]", "help": "GCE exponent", "symbol": "q", "tex": "$q$"},
    "alpha": {"range": "(0, inf)", "help": "sce / nce_rce weight of the first term", "symbol": "α",
              "tex": r"$\alpha$"},
    "beta": {"range": "(0, inf)", "help": "sce / nce_rce weight of the RCE term", "symbol": "β",
             "tex": r"$\beta$"},
    "A": {"range": "(-inf, 0)", "help": "sce / nce_rce: RCE's value of log 0; log(1e-4) = -9.21034 is the official "
          "codes' (they clamp the one-hot target at 1e-4), -4 the papers' (--A -4; docs/peer-losses.md)",
          "symbol": "A", "tex": "$A$"},
    # Every loss takes it, off (None) by default: a wrapper, named in tables as "+ LogitClip δ = 1". Its
    # range keeps float32 sound: below 1e-6 every logit is ~0, above 1e6 no trained network is clipped.
    "logit_clip": {"range": "[1e-06, 1e+06]", "help": "LogitClip (Wei et al., ICML 2023): each sample's logit vector "
                   "is scaled down to this L2 norm where it is longer, before the loss; any loss", "symbol": "δ",
                   "tex": r"$\delta$", "wrapper": "LogitClip"},
}
WRAPPERS = {"logit_clip": None}  # what every loss also takes, and its default: off
# Each loss of losses.py (in its registry's order) with its parameters and their defaults (its
# function's signature): GCE's q is Zhang & Sabuncu's (2018), tau 10 the paper's (Menon et al., 2020);
# SCE's and NCE+RCE's are their losses.py classes' defaults, A = log(1e-4) from the one-hot target their
# official codes clamp at 1e-4 (docs/peer-losses.md).
LOSSES = {
    "ce": {}, "linear": {}, "gce": {"q": 0.7}, "phuber_ce": {"tau": 10.0}, "phuber_gce": {"tau": 10.0, "q": 0.7},
    "sce": {"alpha": 0.1, "beta": 1.0, "A": -9.210340371976182},
    "nce_rce": {"alpha": 1.0, "beta": 1.0, "A": -9.210340371976182},
}


def check_param(name, value, interval=None):
    """float(value) if it is a real number in `interval` ("(1, inf)", "(0, 1]"; default PARAMS[name]'s),
    else ValueError naming it."""
    interval = interval or PARAMS[name]["range"]
    low, high = (float(end) for end in interval[1:-1].split(","))
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok:
        v = float(value)
        ok = (v > low if interval[0] == "(" else v >= low) and (v < high if interval[-1] == ")" else v <= high)
    if not ok:
        raise ValueError(f"{name}={value!r} is not allowed: {name} must be a number in {interval}")
    return float(value)


def describe_losses():
    """One line naming every loss with the allowed range and default of each of its parameters, then
    the wrappers every loss takes (off by default)."""
    def one(name):
        parts = [f"{k} in {PARAMS[k]['range']}, default {v:g}" for k, v in LOSSES[name].items()]
        return f"{name} ({'; '.join(parts)})" if parts else name
    return ", ".join(map(one, LOSSES)) + "".join(
        f"; every loss also takes {k} in {PARAMS[k]['range']} (default off)" for k in WRAPPERS)


# What an entry holds: required keys, then optional ones with their default.
FIELDS = {
    "script": "the training script (a key of SCRIPTS)",
    "settings": "the report's training settings, those the script's optimiser takes (SCRIPTS)",
    "losses": "the report's parameters of its losses on this dataset (REPORT_LOSSES): a single run's defaults "
              "and the rows of the dataset's table",
    "classes": "the number of classes",
    "shape": "(channels, height, width) of one image; the models are built for it (LeNet's 28 x 28)",
    "format": "'idx' (four IDX files) or 'cifar' (CIFAR python batches)",
    "folder": "where torchvision puts the files, below --data-dir",
    "torchvision": "the torchvision.datasets class that downloads it, by name",
    "flips": "the asymmetric noise's map, class -> the class it flips to (docs/noise.md)",
    "sizes": "(training, test) images, for the time estimate",
    "gpu_epoch_seconds": "seconds per epoch of the whole training set on the report's GPU, for the time estimate",
}
OPTIONAL = {
    "peers": {},          # the peer losses' parameters on it, as their authors' official configs set them
    "extra_rows": (),     # the report's additional loss settings, last in its table
    "human": None,        # its CIFAR-N human label noise: file, default, grid, keys, aliases (docs/noise.md)
    "label_key": None,    # format 'cifar': the batches' key of the labels
    "train_files": None,  # format 'cifar': the training batches ...
    "test_files": None,   # ... and the test batches, in the dataset's order
}
FORMATS = {"idx": (), "cifar": ("label_key", "train_files", "test_files")}

# The training scripts: the optimiser each runs (train_mnist.py: Adam with exponential learning-rate
# decay, report section 5.1; train_cifar.py: SGD with Nesterov momentum and step decay, section 5.2),
# and the settings of a dataset's entry that it takes.
COMMON = ("model", "epochs", "batch_size", "lr", "weight_decay")
SCRIPTS = {
    "train_mnist.py": dict(optimiser="adam", settings=(*COMMON, "lr_decay", "lr_decay_steps")),
    "train_cifar.py": dict(optimiser="sgd", settings=(*COMMON, "momentum", "milestones", "lr_gamma")),
}
# The parameters the report sets for each of its losses (report section 5.1: GCE q = 0.7, PHuber-CE
# tau = 10, PHuber-GCE tau = 10 and q = 0.7), which each dataset's entry gives (they differ by dataset).
REPORT_LOSSES = {"gce": ("q",), "phuber_ce": ("tau",), "phuber_gce": ("tau", "q")}

# Report section 5, with the authors' corrections (CIFAR weight decay 5e-4, Nesterov momentum).
MNIST_SETTINGS = dict(model="lenet", epochs=20, batch_size=32, lr=1e-3, weight_decay=1e-3, lr_decay=0.1,
                      lr_decay_steps=10000)
# Report section 5.1 (the MNIST experiment): GCE and PHuber-GCE q = 0.7, PHuber-CE and PHuber-GCE tau = 10.
MNIST_LOSSES = dict(gce=dict(q=0.7), phuber_ce=dict(tau=10.0), phuber_gce=dict(tau=10.0, q=0.7))
# The peer losses as their authors ran them: alpha and beta per dataset from the official configs,
# HanxunH/Active-Passive-Losses configs/<dataset>/{sym,asym}/<loss>.yaml (the code of Ma et al., 2020, which
# also runs SCE). Its sym and asym configs set the same values, so one entry serves every noise kind
# (instance and human noise have no config there: the dataset's values). RCE's constant A: losses.py.
MNIST_PEERS = {
    "sce": dict(alpha=0.01, beta=1.0),     # configs/mnist/{sym,asym}/sce.yaml; the same in YisenWang/
                                           # symmetric_cross_entropy_for_noisy_labels train_models.py (MNIST)
    "nce_rce": dict(alpha=1.0, beta=10.0),  # configs/mnist/{sym,asym}/nce+rce.yaml
}
# The asymmetric flip maps are data (class -> class it is flipped to), the common definitions of
# Patrini et al. (2017) / Zhang & Sabuncu (2018); see docs/noise.md.
CIFAR100_COARSE = [  # super-class of each fine label, in the order of the dataset's fine labels
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11, 6, 11, 5, 10, 7, 6, 13, 15, 3, 15,
    0, 11, 1, 10, 12, 14, 16, 9, 11, 5, 5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4,
    18, 17, 10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13, 16, 19, 2, 4, 6, 19,
    5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13]


def next_within_superclass(coarse):
    """Each class flips to the next class of its super-class, circularly."""
    flips = {}
    for group in sorted(set(coarse)):
        members = [c for c, g in enumerate(coarse) if g == group]
        flips.update({c: members[(i + 1) % len(members)] for i, c in enumerate(members)})
    return flips


# Sizes: training and test images (report sections 5.1.1, 5.2.1). GPU timings: the report's own on an
# RTX 2080 Ti in full precision (sections 5.1.2, 5.2.2): MNIST 2 minutes per 20-epoch run, CIFAR-10 12
# hours per 400 epochs, CIFAR-100 4 hours per 200 epochs, per epoch of the full training set.
DATASETS = {
    "mnist": dict(
        script="train_mnist.py", settings=MNIST_SETTINGS, losses=MNIST_LOSSES, peers=MNIST_PEERS,
        classes=10, shape=(1, 28, 28), format="idx", folder="MNIST", torchvision="MNIST",
        flips={2: 7, 3: 8, 5: 6, 6: 5, 7: 1}, sizes=(60000, 10000), gpu_epoch_seconds=6),
    # Not in the report: MNIST's settings (and the peers' MNIST configs: no official one), on data that
    # installs offline. Its sizes: Xiao et al. (2017); its GPU time: MNIST's (the same network and sizes).
    "fashion-mnist": dict(
        script="train_mnist.py", settings=MNIST_SETTINGS, losses=MNIST_LOSSES, peers=MNIST_PEERS,
        classes=10, shape=(1, 28, 28), format="idx", folder="FashionMNIST", torchvision="FashionMNIST",
        flips={6: 0, 0: 6, 2: 4, 4: 2, 5: 7, 7: 5},  # shirt<->t-shirt, pullover<->coat, sandal<->sneaker
        sizes=(60000, 10000), gpu_epoch_seconds=6),
    "cifar10": dict(
        script="train_cifar.py",
        settings=dict(model="resnet50", epochs=400, batch_size=64, lr=0.1, weight_decay=5e-4, momentum=0.1,
                      milestones=[160, 300, 360], lr_gamma=0.1),
        # report section 5.2.1: the MNIST experiment's parameters, but tau = 2 for PHuber-CE on CIFAR-10
        losses={**MNIST_LOSSES, "phuber_ce": dict(tau=2.0)},
        peers={
            "sce": dict(alpha=0.1, beta=1.0),    # configs/cifar10/{sym,asym}/sce.yaml; SCE repo train_models.py (CIFAR-10)
            "nce_rce": dict(alpha=1.0, beta=1.0),  # configs/cifar10/{sym,asym}/nce+rce.yaml
        },
        classes=10, shape=(3, 32, 32), format="cifar", folder="cifar-10-batches-py", torchvision="CIFAR10",
        label_key="labels", train_files=[f"data_batch_{i}" for i in range(1, 6)], test_files=["test_batch"],
        flips={9: 1, 2: 0, 4: 7, 3: 5, 5: 3},  # truck->automobile, bird->airplane, deer->horse, cat<->dog
        sizes=(50000, 10000), gpu_epoch_seconds=108,
        # Human label noise (Wei et al., ICLR 2022): the CIFAR-N label file, the keys it holds for the
        # dataset's fine labels, the default, the keys of run_all.sh --human-noise (docs/noise.md), and the
        # names the official training code gives them (UCSC-REAL/cifar-10-100n main.py, noise_type_map),
        # accepted as aliases.
        human=dict(file="CIFAR-10_human.pt", default="worse_label", grid=("aggre_label", "random_label1", "worse_label"),
                   keys=("aggre_label", "random_label1", "random_label2", "random_label3", "worse_label"),
                   aliases=dict(aggre="aggre_label", rand1="random_label1", rand2="random_label2",
                                rand3="random_label3", worst="worse_label"))),
    "cifar100": dict(
        script="train_cifar.py",
        settings=dict(model="resnet50", epochs=200, batch_size=128, lr=0.1, weight_decay=5e-4, momentum=0.1,
                      milestones=[60, 120, 160], lr_gamma=0.2),
        losses=MNIST_LOSSES,  # report section 5.2.1: the MNIST experiment's
        extra_rows=(dict(loss="phuber_ce", tau=50.0),),  # the report's additional experiment, last in its Table 2
        peers={
            "sce": dict(alpha=6.0, beta=0.1),     # configs/cifar100/{sym,asym}/sce.yaml; SCE repo train_models.py (CIFAR-100)
            "nce_rce": dict(alpha=10.0, beta=0.1),  # configs/cifar100/{sym,asym}/nce+rce.yaml
        },
        classes=100, shape=(3, 32, 32), format="cifar", folder="cifar-100-python", torchvision="CIFAR100",
        label_key="fine_labels", train_files=["train"], test_files=["test"],
        flips=next_within_superclass(CIFAR100_COARSE), sizes=(50000, 10000), gpu_epoch_seconds=72,
        human=dict(file="CIFAR-100_human.pt", default="noisy_label", grid=("noisy_label",), keys=("noisy_label",),
                   aliases=dict(noisy100="noisy_label"))),
}

# The datasets of each study, in the order of its cells. The report's grid (run_all.sh; its Tables
# 1-2) and its Table 3 (noise seeds 0-3 on MNIST and CIFAR-100). The memorisation benchmark
# (docs/memorisation.md) and the tuning study in its regime (docs/tuning.md), both not the report's:
# the paper's mechanism on a 2-core CPU, on data that installs offline first; MEMORISATION_LOSSES: the
# dataset whose report settings its losses take (grid.memorisation_rows).
DEFAULT_GRID = ("mnist", "cifar10", "cifar100")
TABLE3_DATASETS = ("mnist", "cifar100")
MEMORISATION, MEMORISATION_LOSSES = ("fashion-mnist", "mnist"), "mnist"
TUNE_STUDY = ("fashion-mnist",)
# bench.py's: the report's LeNet setting (Table 1), its ResNet-50 setting (a 200-epoch CIFAR-100 run),
# and the real data a machine without internet has (Debian's dataset-fashion-mnist package).
BENCH = dict(lenet="mnist", resnet50="cifar100", offline="fashion-mnist")


def check(table=None):
    """Raise ValueError, one line naming the dataset and what its entry lacks, unless every entry of
    `table` (default DATASETS) and every study's dataset is well formed."""
    table = DATASETS if table is None else table
    for name, entry in table.items():
        problem = entry_problem(entry)
        if problem:
            raise ValueError(f"catalog.py: dataset {name!r}: {problem}")
    studies = dict(DEFAULT_GRID=DEFAULT_GRID, TABLE3_DATASETS=TABLE3_DATASETS, TUNE_STUDY=TUNE_STUDY,
                   MEMORISATION=(*MEMORISATION, MEMORISATION_LOSSES), BENCH=tuple(BENCH.values()))
    for study, names in studies.items():
        for name in names:
            if name not in table:
                raise ValueError(f"catalog.py: {study} names dataset {name!r}, which has no entry in DATASETS")


def entry_problem(entry):
    """What is wrong with one entry, in words, or None."""
    if not isinstance(entry, dict):
        return f"its entry is a {type(entry).__name__}, not a dict of {', '.join(FIELDS)}"
    missing = [k for k in FIELDS if k not in entry]
    if missing:
        return "its entry has no " + "; no ".join(f"{k}, {FIELDS[k]}" for k in missing)
    unknown = sorted(set(entry) - set(FIELDS) - set(OPTIONAL))
    if unknown:
        return f"its entry has {', '.join(unknown)}, which are not fields (fields: {', '.join([*FIELDS, *OPTIONAL])})"
    if entry["script"] not in SCRIPTS:
        return f"script {entry['script']!r} is not a training script: {', '.join(SCRIPTS)}"
    takes = SCRIPTS[entry["script"]]["settings"]
    have = entry["settings"] if isinstance(entry["settings"], dict) else {}
    wrong = [f"lacks {', '.join(k for k in takes if k not in have)}" if set(takes) - set(have) else "",
             f"has {', '.join(sorted(set(have) - set(takes)))}" if set(have) - set(takes) else ""]
    if not isinstance(entry["settings"], dict) or any(wrong):
        return (f"settings {' and '.join(filter(None, wrong)) or 'is not a dict'}: {entry['script']}'s optimiser "
                f"({SCRIPTS[entry['script']]['optimiser']}) takes {', '.join(takes)}")
    for field in ("losses", "peers"):
        params = entry.get(field, {})
        if not (isinstance(params, dict) and all(isinstance(p, dict) and all(isinstance(v, (int, float))
                                                                              for v in p.values())
                                                 for p in params.values())):
            return f"{field} is not a dict of loss -> {{parameter: number}}"
    for field in ("losses", "peers"):  # a misspelt name would silently leave the loss's default in force
        for loss, params in entry.get(field, {}).items():
            unknown = sorted(set(params) - set(LOSSES.get(loss, {})))
            if loss not in LOSSES or unknown:
                return (f"{field} names loss {loss!r}: losses are {', '.join(LOSSES)}" if loss not in LOSSES else
                        f"{field}[{loss!r}] has {', '.join(unknown)}: {loss} takes {', '.join(LOSSES[loss]) or 'none'}")
    lacking = [f"{loss} {p}" for loss, ps in REPORT_LOSSES.items() for p in ps if p not in entry["losses"].get(loss, {})]
    if lacking:
        return f"losses has no {', '.join(lacking)} (the report's losses take them: REPORT_LOSSES)"
    if set(entry["losses"]) & set(entry.get("peers", {})):
        return f"{', '.join(sorted(set(entry['losses']) & set(entry['peers'])))} in both losses and peers: give each once"
    if not all(isinstance(r, dict) and "loss" in r for r in entry.get("extra_rows", ())):
        return "extra_rows is not a tuple of flag dicts, each with its 'loss'"
    for row in entry.get("extra_rows", ()):
        takes = {*LOSSES.get(row["loss"], ()), *WRAPPERS, "loss", "clip_norm", "clip_mode"}
        if row["loss"] not in LOSSES or set(row) - takes:
            return (f"extra_rows has {row}: " + (f"losses are {', '.join(LOSSES)}" if row["loss"] not in LOSSES else
                                                 f"{row['loss']} takes {', '.join(sorted(takes - {'loss'}))}"))
    k = entry["classes"]
    if not (isinstance(k, int) and k >= 2):
        return f"classes {k!r} is not an integer >= 2"
    if not (isinstance(entry["shape"], tuple) and len(entry["shape"]) == 3 and all(isinstance(n, int) and n > 0
                                                                                   for n in entry["shape"])):
        return f"shape {entry['shape']!r} is not (channels, height, width)"
    if entry["format"] not in FORMATS:
        return f"format {entry['format']!r} is not one of {', '.join(FORMATS)}"
    lacks = [f for f in FORMATS[entry["format"]] if entry.get(f) is None]
    if lacks:
        return f"format {entry['format']!r} needs {', '.join(lacks)}"
    flips = entry["flips"]
    if not (isinstance(flips, dict) and all(isinstance(a, int) and isinstance(b, int) and 0 <= a < k and 0 <= b < k
                                            for a, b in flips.items())):
        return f"flips is not a dict of class -> class, each in [0, {k})"
    if not (isinstance(entry["sizes"], tuple) and len(entry["sizes"]) == 2 and all(isinstance(n, int) and n > 0
                                                                                   for n in entry["sizes"])):
        return f"sizes {entry['sizes']!r} is not (training images, test images)"
    if not (isinstance(entry["gpu_epoch_seconds"], (int, float)) and entry["gpu_epoch_seconds"] > 0):
        return f"gpu_epoch_seconds {entry['gpu_epoch_seconds']!r} is not a number > 0"
    human = entry.get("human")
    if human is not None and not (isinstance(human, dict) and {"file", "default", "grid", "keys", "aliases"} <= set(human)
                                  and human["default"] in human["keys"] and set(human["grid"]) <= set(human["keys"])
                                  and set(human["aliases"].values()) <= set(human["keys"])):
        return "human is not a dict of file, default, grid, keys and aliases, whose default, grid and aliases are keys"
    return None


def scripts_datasets(script):
    """The datasets `script` trains, in the table's order (the first is its default)."""
    return [name for name, entry in DATASETS.items() if entry["script"] == script]


def loss_defaults(dataset, loss):
    """The parameters of `loss` on `dataset` where the report (losses: {'tau': 2.0} for PHuber-CE on
    CIFAR-10) or, for a peer loss, its authors' configs (peers) set them: the defaults of a single run,
    so that it is the same run as the grid's cell; {} where neither does (the loss's own defaults)."""
    entry = DATASETS[dataset]
    return dict(entry["losses"].get(loss) or entry["peers"].get(loss, {}))


try:  # every entry point imports this: a mistake in the tables is its one line there (errors.py)
    check()
except ValueError as e:
    raise Failure(str(e), code=1) from None
DATASETS = {name: {**OPTIONAL, **entry} for name, entry in DATASETS.items()}  # every key, so readers index it
HUMAN_NOISE = {name: entry["human"] for name, entry in DATASETS.items() if entry["human"]}
