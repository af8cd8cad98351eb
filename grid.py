"""The report's experiment grid, defined once (standard library only).

run_all.sh runs it (through runner.py), aggregate.py lays out its tables with its row labels and
order, and the training scripts take the same per-dataset settings, from the dataset table it reads
(catalog.py):

    report_rows     the loss settings of a dataset's table, in its order (its parameters: catalog.py)
    NAMES, BASE     how tables name each loss; which base loss each partially Huberised loss is paired with
    RHOS, TRIALS    the noise rates and trials of every table; TABLE3, the noise-seed study
    TAU_CANDIDATES, VAL_SPLIT, choose_tau   the original paper's tau protocol
    TUNE            the fair comparison (run_all.sh --tune): each loss's candidate parameters
    MEMORISATION    the CPU-scale memorisation benchmark, and the tuning study in its regime
    cells           the numbered cells of a selection: what --list shows and --task I runs
    estimate        what a selection costs, on the machine its timings were measured on
"""
from dataclasses import dataclass, field

import catalog
import config

SYNTHETIC = {"long_servedio": "synthetic_long_servedio.py", "ding": "synthetic_ding.py"}
DEFAULT_DATASETS = ("synthetic", *catalog.DEFAULT_GRID)
RHOS = (0.0, 0.2, 0.4, 0.6)
TRIALS = 3                       # seeds 0, 1, 2; the label noise seed is 0 for every trial
SYNTHETIC_TRIALS = 500           # Long & Servedio trials per rho
TAU_CANDIDATES = (2.0, 10.0)     # --tune-tau: the original paper chose tau from candidates ...
VAL_SPLIT = 0.1                  # ... by final accuracy on held-out noisy training data
QUICK = ["--epochs", "1", "--limit-train", "256", "--limit-test", "256"]  # --quick: checks the pipeline
# How tables name each loss (rows are ordered as losses.LOSSES lists them), and the base loss each
# partially Huberised loss is paired with (same seeds) in the paired-difference tables.
NAMES = {"ce": "CE", "linear": "Linear", "gce": "GCE", "phuber_ce": "PHuber-CE", "phuber_gce": "PHuber-GCE",
         "sce": "SCE", "nce_rce": "NCE+RCE"}
BASE = {"phuber_ce": "ce", "phuber_gce": "gce"}


@dataclass(frozen=True)
class Row:
    """One loss setting of a table: `key` names it in cell ids, `flags` are the script's, `label`
    is the report's name for the row."""
    key: str
    flags: dict
    label: str = field(default="", compare=False)

    def argv(self):
        return [a for k, v in self.flags.items() for a in (f"--{k.replace('_', '-')}", number_text(v))]


def number_text(value):
    """A number as text, for a flag or a cell id: short ('10' for 10.0) where that is exact, never rounded."""
    if not isinstance(value, float):
        return str(value)
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


def report_rows(dataset):
    """The report's loss settings for `dataset`, in the order and with the labels of its tables: its
    parameters are the dataset's (catalog.py: losses, then extra_rows)."""
    entry = catalog.DATASETS[dataset]
    extra = [Row(flags["loss"], dict(flags), NAMES[flags["loss"]] + "".join(
        f" {SYMBOLS[k]} = {v:g}" for k, v in flags.items() if k != "loss")) for flags in entry["extra_rows"]]
    return loss_rows(entry["losses"], [entry["losses"]["phuber_ce"]["tau"]]) + extra


def loss_rows(params, taus):
    """CE, CE + clipping 0.1 (the paper's, report section 5.1), linear, GCE, PHuber-CE at each of `taus`,
    PHuber-GCE, in this order, with the parameters `params` ({loss: {parameter: value}}) set."""
    gce, phuber_gce = ({"loss": loss, **params[loss]} for loss in ("gce", "phuber_gce"))
    return [Row("ce", {"loss": "ce"}, "CE"), Row("ce+clip", {"loss": "ce", "clip_norm": 0.1}, "CE + clipping"),
            Row("linear", {"loss": "linear"}, "Linear"), Row("gce", gce, "GCE"),
            *(Row("phuber_ce", {"loss": "phuber_ce", "tau": t}, f"PHuber-CE τ = {t:g}") for t in taus),
            Row("phuber_gce", phuber_gce, f"PHuber-GCE τ = {phuber_gce['tau']:g}")]


# The report's Table 3: CE and PHuber-GCE at rho = 0.6 on MNIST and CIFAR-100, label noise seeds 0-3.
TABLE3 = dict(datasets=catalog.TABLE3_DATASETS, losses=("ce", "phuber_gce"), rhos=(0.6,), noise_seeds=(0, 1, 2, 3))

# Not the report's: the paper's mechanism on a 2-core CPU (docs/memorisation.md). With the report's
# MNIST settings LeNet never memorises (its learning rate decays 5000x in 20 epochs), so Adam keeps a
# constant rate and no weight decay. 30 epochs: in a pilot at rho = 0.6, CE peaked at 86% test
# accuracy at epochs 5-10 and had lost 19 points by epoch 30 (20% of the corrupted samples
# memorised); epochs 30-60 lost 10 more at twice the cost. Its own results folder (and log names).
MEMORISATION = dict(datasets=catalog.MEMORISATION, rhos=(0.0, 0.4, 0.6), trials=3, folder="memorisation",
                    flags=("--epochs", "30", "--lr-decay", "1", "--weight-decay", "0"),
                    taus=(2.0, 5.0, 10.0, 50.0))
# The fair comparison in that regime, on the same CPU (run_all.sh --tune --memorisation,
# docs/tuning.md): every candidate of TUNE x 4 rhos x 3 trials is 228 runs, so each run trains on
# 5,000 of the noisy training samples for 20 epochs (a run takes about a minute). Pilot (rho = 0.6,
# seed 0, docs/tuning.md): CE peaked at 75.6% test accuracy at epoch 6 and fell to 65.7% by epoch 20,
# with 25% of the corrupted samples memorised; PHuber-CE tau = 2 was at 76.4% (5% memorised).
TUNE_STUDY = dict(datasets=catalog.TUNE_STUDY, rhos=RHOS, trials=3,
                  flags=("--epochs", "20", "--limit-train", "5000", "--lr-decay", "1", "--weight-decay", "0"))


# What cells cost, for --list (estimate). On a GPU: the report's own timings (each dataset's
# gpu_epoch_seconds and sizes in catalog.py). On the CPU (the memorisation settings): measured
# on this project's 2-core machine with two cells at a time (run_all.sh --cpu-workers 2, one thread
# each), pilot runs of TUNE_STUDY: LeNet trains about 2,900 and evaluates about 13,000 images/s per
# cell, and a run needs about 6 s to start.
CPU = dict(train_rate=2900, eval_rate=13000, start_seconds=6, workers=2)


def cell_config(cell, extra=(), tau=TAU_CANDIDATES[0], argv=None):
    """The config.Config that the training cell's script makes of its flags (`argv`, default the cell's)
    and the pass-through ones (`extra`): one line and exit status 2 for a value it refuses. A tuned
    cell's TUNED stands for `tau`."""
    return config.parse(cell.script, [*with_tau(argv or cell.argv, tau), *extra])


def with_tau(argv, tau):
    """argv with `tau` for the TUNED a tuned cell's tau stands as until its tuning runs have chosen it
    (to check its flags before, any candidate will do), written exactly (number_text)."""
    return [number_text(float(tau)) if a == "TUNED" else a for a in argv]


def cell_cost(cell, cpu, extra=()):
    """Seconds of one training cell (with the pass-through flags `extra`): on the CPU of CPU, or on the
    report's GPU."""
    c, entry = cell_config(cell, extra), catalog.DATASETS[cell.dataset]
    train, test = entry["sizes"]
    val = round(c.val_split * train)
    trained = min(c.limit_train or train, train - val)
    tested = min(c.limit_test or test, test)
    if cpu:
        return CPU["start_seconds"] + c.epochs * (trained / CPU["train_rate"] + (val + tested) / CPU["eval_rate"])
    return c.epochs * entry["gpu_epoch_seconds"] * trained / train


def estimate(cells, cpu=False, extra=()):
    """One line: the time the training cells of a selection take (with the pass-through flags `extra`,
    e.g. `-- --epochs 5`), and on what it was measured."""
    training = [c for c in cells if c.dataset != "synthetic"]
    seconds = sum(cell_cost(c, cpu, extra) for c in training)
    if cpu:
        return (f"time estimate: {len(training)} training cells, {CPU['workers']} at a time on a 2-core CPU "
                f"(run_all.sh --cpu-workers {CPU['workers']}): about {hours(seconds / CPU['workers'])}, "
                "from timings measured on this project's machine (grid.CPU)")
    return (f"time estimate: {len(training)} training cells, about {hours(seconds)} on one RTX 2080 Ti in full "
            "precision, from the report's timings (catalog.py); --amp fp16 about halves it, --gpus N "
            "divides it by N")


def hours(seconds):
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def memorisation_rows():
    """CE, CE + clipping 0.1, linear, GCE, PHuber-CE at each tau of MEMORISATION, PHuber-GCE, with the
    report's parameters on MNIST (catalog.MEMORISATION_LOSSES), in this order."""
    return loss_rows(catalog.DATASETS[catalog.MEMORISATION_LOSSES]["losses"], MEMORISATION["taus"])


def choose_tau(rows, dataset, loss, candidates=None, logit_clip=None):
    """The tau whose runs have the best mean final noisy-validation accuracy at the highest rho.

    Reads only val_acc: the test set never takes part in the choice. With `candidates`, only they
    count, and every one of them must have a run, or there is no choice yet (None). The loss behind
    LogitClip (logit_clip, a float) is another loss: its runs are chosen among apart. Returns
    (tau, {tau: score}).
    """
    def clip(r):
        return float(r["logit_clip"]) if r.get("logit_clip") not in ("", None) else None
    runs = [r for r in rows if r["dataset"] == dataset and r["loss"] == loss and r.get("val_acc") not in ("", None)
            and r.get("tau") not in ("", None) and r.get("rho") not in ("", None) and clip(r) == logit_clip
            and (not candidates or float(r["tau"]) in candidates)]
    if not runs:
        return None, {}
    top = max(float(r["rho"]) for r in runs)
    by_tau = {}
    for r in runs:
        if float(r["rho"]) == top:
            by_tau.setdefault(float(r["tau"]), []).append(float(r["val_acc"]))
    scores = {tau: sum(v) / len(v) for tau, v in by_tau.items()}
    if candidates and not set(candidates) <= set(scores):
        return None, scores
    return max(sorted(scores), key=lambda tau: scores[tau]), scores


# ---------------------------------------------------------------------------------------------
# The fair comparison (run_all.sh --tune; docs/tuning.md): for each dataset, noise rate and loss,
# every candidate value of the loss's parameter is trained for every trial with VAL_SPLIT of the
# noisy training set held out; selection.py chooses, per rho, the candidate of best mean noisy-
# validation accuracy, and reports the test accuracy of the chosen candidate's own runs.

@dataclass(frozen=True)
class Family:
    """A loss of the comparison: fixed flags, and the one parameter whose candidates it tries."""
    key: str               # names it in cell ids and --losses
    label: str             # names it in tables
    flags: dict            # the flags every candidate shares
    param: str = None      # the tuned flag; None: untuned, one candidate
    values: tuple = ()

    def candidates(self):
        """[(id part, grid.Row)] in the order of `values` (the order ties are broken in)."""
        if self.param is None:
            return [(self.key, Row(self.key, dict(self.flags), self.label))]
        return [(f"{self.key}-{self.param}{number_text(v)}", Row(self.key, {**self.flags, self.param: v},
                                                          f"{self.label} {SYMBOLS[self.param]} = {v:g}"))
                for v in self.values]


SYMBOLS = {"clip_norm": "clip", "q": "q", "tau": "τ", "logit_clip": "δ"}
TUNE = (
    Family("ce", "CE", {"loss": "ce"}),  # the untuned baseline
    # 0.1 is the paper's (report section 5.1); 1 and 10 are the decades above it, up to a norm that
    # a LeNet mini-batch gradient rarely reaches (per-sample norms are about 6, docs/clipping.md).
    Family("ce+clip", "CE + clipping", {"loss": "ce"}, "clip_norm", (0.1, 1.0, 10.0)),
    # q in (0, 1]: q -> 0 is CE, q = 1 the linear loss; 0.7 is Zhang & Sabuncu's (2018, section 4) and
    # the report's; an even grid across the interval around it.
    Family("gce", "GCE", {"loss": "gce"}, "q", (0.3, 0.5, 0.7, 0.9)),
    # 2 and 10: the original paper's candidates (Menon et al., 2020, section 5: tau in {2, 10});
    # 50: the report's additional CIFAR-100 experiment (section 5.2.1); 5 between them.
    Family("phuber_ce", "PHuber-CE", {"loss": "phuber_ce"}, "tau", (2.0, 5.0, 10.0, 50.0)),
    Family("phuber_gce", "PHuber-GCE", {"loss": "phuber_gce", "q": 0.7}, "tau", (2.0, 5.0, 10.0)),
    # LogitClip's paper tunes delta = 1/temp over [0.1, 5] (docs/logitclip.md); its code's default is 1.
    Family("ce+logitclip", "CE + LogitClip", {"loss": "ce"}, "logit_clip", (0.5, 1.0, 2.0, 5.0)),
)


# ---------------------------------------------------------------------------------------------
# Cells.

@dataclass(frozen=True)
class Cell:
    """One command of the grid. `folder` is below the results folder; `tuned` names the loss whose
    tau is chosen (choose_tau on the tuning runs) just before the cell starts."""
    id: str
    dataset: str           # "synthetic" for the synthetic experiments
    script: str
    argv: tuple            # the script's flags, without --out (the runner adds it)
    folder: str = ""
    tuning: bool = False   # --tune-tau's first phase: every tuning cell finishes before the grid
    tuned: str = ""


def rows_for(dataset, losses=None, *, taus=None, tune_tau=False, memorisation=False, logit_clip=None):
    """The rows of `dataset` selected by --losses (any other registry loss is added with its
    defaults), with --taus (a sweep: each tau instead) or --tune-tau (one row per loss, tau later);
    --logit-clip puts every row's loss behind LogitClip at that norm."""
    rows = memorisation_rows() if memorisation else report_rows(dataset)
    for name in losses or ():
        if name not in {r.key for r in rows}:
            rows.append(Row(name, {"loss": name}))
    rows = [r for r in rows if losses is None or r.key in losses]
    if logit_clip is not None:
        rows = [Row(f"{r.key}+lc{number_text(logit_clip)}", {**r.flags, "logit_clip": logit_clip}) for r in rows]
    out = []
    for row in rows:
        variants = [row]
        if "tau" in row.flags and taus:
            variants = [Row(row.key, {**row.flags, "tau": t}) for t in taus]
        elif "tau" in row.flags and tune_tau:
            variants = [Row(row.key, {**row.flags, "tau": "TUNED"}, row.label)]
        out += [v for v in variants if v not in out]
    return out


def cell_id(dataset, row, noise, seed, noise_seed=0):
    """e.g. mnist-phuber_ce-tau10-rho0.4-seed0; `noise` is the rho (or the human-noise key)."""
    tau = row.flags.get("tau")
    part = "" if tau is None else "-tuned" if tau == "TUNED" else f"-tau{number_text(tau)}"
    noise = noise if isinstance(noise, str) else f"rho{number_text(noise)}"
    # noise seed 0 is every table's: its cells are the same runs, with the same ids, in every selection
    return f"{dataset}-{row.key}{part}-{noise}-seed{seed}" + (f"-ns{noise_seed}" if noise_seed else "")


def noise_columns(dataset, rhos, human):
    """The noise a table's columns vary: (id part, flags) per rho, or per CIFAR-N key (--human-noise)."""
    if human:
        return [(key, ("--noise", "human", "--noise-key", key)) for key in catalog.HUMAN_NOISE[dataset]["grid"]]
    return [(rho, ("--rho", number_text(rho))) for rho in rhos]


def cells(datasets=DEFAULT_DATASETS, *, losses=None, rhos=RHOS, trials=TRIALS, taus=None, tune_tau=False,
          candidates=TAU_CANDIDATES, val_split=VAL_SPLIT, quick=False, noise_seeds=(0,), memorisation=False,
          human=False, logit_clip=None, tune=False):
    """The numbered cells of a selection. The order depends only on the selection, so that a SLURM
    array task given the same selection finds the same cell: tuning cells first (--tune-tau), then
    per dataset, row, rho (or human-noise key), label noise seed and seed. memorisation: that
    setting's rows and flags; human: the CIFAR-N keys of catalog.HUMAN_NOISE instead of rhos;
    tune: the fair comparison's candidates (TUNE) instead of the rows, into the setting's tune/ folder."""
    if tune:
        return tune_cells(datasets, losses, rhos, trials, val_split=val_split, quick=quick, memorisation=memorisation)
    setting = MEMORISATION if memorisation else dict(flags=(), folder="")
    budget = [*setting["flags"], *(QUICK if quick else [])]
    prefix = "memorisation-" if memorisation else ""
    found = []
    for dataset in datasets if tune_tau else ():
        if dataset == "synthetic":
            continue
        for row in rows_for(dataset, losses, tune_tau=True, logit_clip=logit_clip):
            if row.flags.get("tau") != "TUNED":
                continue
            for tau in candidates:
                tuned = Row(row.key, {**row.flags, "tau": tau})
                found.append(Cell(f"tau-tuning-{cell_id(dataset, tuned, max(rhos), 0)}", dataset,
                                  catalog.DATASETS[dataset]["script"],
                                  ("--dataset", dataset, *tuned.argv(), "--rho", number_text(max(rhos)), "--seed", "0",
                                   "--val-split", number_text(val_split), *budget), "tuning", tuning=True))
    for dataset in datasets:
        if dataset == "synthetic":
            trials_ls = 20 if quick else SYNTHETIC_TRIALS
            found.append(Cell("synthetic-long_servedio", "synthetic", SYNTHETIC["long_servedio"],
                              ("--trials", str(trials_ls)), "synthetic"))
            found.append(Cell("synthetic-ding", "synthetic", SYNTHETIC["ding"], (), "synthetic"))
            continue
        script = catalog.DATASETS[dataset]["script"]
        for row in rows_for(dataset, losses, taus=taus, tune_tau=tune_tau, memorisation=memorisation,
                            logit_clip=logit_clip):
            tuned = row.flags["loss"] if row.flags.get("tau") == "TUNED" else ""
            for column, noise in noise_columns(dataset, rhos, human):
                for noise_seed in noise_seeds:
                    seeded = ("--noise-seed", str(noise_seed)) if noise_seed else ()
                    for seed in range(trials):
                        found.append(Cell(prefix + cell_id(dataset, row, column, seed, noise_seed), dataset,
                                          script, ("--dataset", dataset, *row.argv(), *noise, *seeded,
                                                   "--seed", str(seed), *budget),
                                          setting["folder"], tuned=tuned))
    return found


def tune_folder(memorisation):
    """Where the fair comparison's runs go: tune/ below its setting's results folder."""
    return f"{MEMORISATION['folder']}/tune" if memorisation else "tune"


def tune_cells(datasets, losses, rhos, trials, *, val_split, quick, memorisation):
    """The fair comparison's cells: per dataset, rho (in the order given: a rho's choices are complete
    before the next rho starts), family (TUNE order), candidate and seed; in the memorisation regime
    with TUNE_STUDY's budget. Every cell holds out val_split of the training set (noisy labels)."""
    budget = [*(TUNE_STUDY["flags"] if memorisation else ()), *(QUICK if quick else [])]
    prefix = "memorisation-tune-" if memorisation else "tune-"
    found = []
    for dataset in datasets:
        for rho in rhos:
            for family in TUNE:
                if losses is not None and family.key not in losses:
                    continue
                for part, row in family.candidates():
                    for seed in range(trials):
                        found.append(Cell(f"{prefix}{dataset}-{part}-rho{number_text(rho)}-seed{seed}", dataset,
                                          catalog.DATASETS[dataset]["script"],
                                          ("--dataset", dataset, *row.argv(), "--rho", number_text(rho), "--seed", str(seed),
                                           "--val-split", number_text(val_split), *budget), tune_folder(memorisation)))
    return found


def known_losses(tune=False):
    """The names --losses accepts: the report's row keys and every loss of the registry; with --tune,
    the families of TUNE."""
    return [f.key for f in TUNE] if tune else ["ce+clip"] + list(catalog.LOSSES)
