"""The report's experiment grid, defined once (standard library only): each table's loss rows (report sections
4-5; parameters and dataset settings: catalog.py), the noise rates and trials, Table 3, the tau protocols, the
memorisation settings, and the numbered cells that run_all.sh runs, with their time estimate."""
from dataclasses import dataclass, field

import catalog
import config

DEFAULT_DATASETS = ("synthetic", *catalog.DEFAULT_GRID)
RHOS = (0.0, 0.2, 0.4, 0.6)
TRIALS = 3                       # seeds 0, 1, 2; the label noise seed is 0 for every trial
SYNTHETIC_TRIALS = 500           # Long & Servedio trials per rho
TAU_CANDIDATES = (2.0, 10.0)     # --tune-tau: the original paper chose tau from candidates ...
VAL_SPLIT = 0.1                  # ... by final accuracy on held-out noisy training data
QUICK = ("--epochs", "1", "--limit-train", "256", "--limit-test", "256")  # --quick: checks the pipeline
# How tables name each loss (rows are ordered as losses.LOSSES lists them), and the base loss each
# partially Huberised loss is paired with (same seeds) in the paired-difference tables.
NAMES = {"ce": "CE", "linear": "Linear", "gce": "GCE", "phuber_ce": "PHuber-CE", "phuber_gce": "PHuber-GCE",
         "sce": "SCE", "nce_rce": "NCE+RCE"}
BASE = {"phuber_ce": "ce", "phuber_gce": "gce"}


@dataclass(frozen=True)
class Row:
    """One loss setting of a table: `key` names it in cell ids, `flags` are the script's, `label` the tables'."""
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
    """The report's loss settings for `dataset` (catalog.py), in its tables' order and with their labels."""
    entry = catalog.DATASETS[dataset]
    extra = [Row(flags["loss"], dict(flags), NAMES[flags["loss"]] + "".join(
        f" {SYMBOLS[k]} = {v:g}" for k, v in flags.items() if k != "loss")) for flags in entry["extra_rows"]]
    return loss_rows(entry["losses"], [entry["losses"]["phuber_ce"]["tau"]]) + extra


def loss_rows(params, taus):
    """CE, CE + clipping 0.1 (report section 5.1), linear, GCE, PHuber-CE at each tau, PHuber-GCE, with `params`."""
    gce, phuber_gce = ({"loss": loss, **params[loss]} for loss in ("gce", "phuber_gce"))
    return [Row("ce", {"loss": "ce"}, "CE"), Row("ce+clip", {"loss": "ce", "clip_norm": 0.1}, "CE + clipping"),
            Row("linear", {"loss": "linear"}, "Linear"), Row("gce", gce, "GCE"),
            *(Row("phuber_ce", {"loss": "phuber_ce", "tau": t}, f"PHuber-CE τ = {t:g}") for t in taus),
            Row("phuber_gce", phuber_gce, f"PHuber-GCE τ = {phuber_gce['tau']:g}")]


def memorisation_rows():
    """loss_rows at each tau of MEMORISATION, with the report's MNIST parameters (catalog.MEMORISATION_LOSSES)."""
    return loss_rows(catalog.DATASETS[catalog.MEMORISATION_LOSSES]["losses"], MEMORISATION["taus"])


# The report's Table 3: its noise-seed study.
TABLE3 = dict(datasets=catalog.TABLE3_DATASETS, losses=("ce", "phuber_gce"), rhos=(0.6,), noise_seeds=(0, 1, 2, 3))

# Not the report's: the paper's mechanism on a 2-core CPU. With the report's MNIST settings LeNet never
# memorises (its learning rate decays 5000x in 20 epochs), so Adam keeps a constant rate and no weight
# decay; 30 epochs from a pilot (docs/memorisation.md). Its own results folder (and log names).
MEMORISATION = dict(datasets=catalog.MEMORISATION, rhos=(0.0, 0.4, 0.6), trials=3, folder="memorisation",
                    flags=("--epochs", "30", "--lr-decay", "1", "--weight-decay", "0"), taus=(2.0, 5.0, 10.0, 50.0))
# The fair comparison in that regime (--tune --memorisation): TUNE's candidates x 4 rhos x 3 trials is 228 runs,
# so each trains on 5,000 noisy samples for 20 epochs (a minute), which a pilot showed enough (docs/tuning.md).
TUNE_STUDY = dict(datasets=catalog.TUNE_STUDY, rhos=RHOS, trials=3,
                  flags=("--epochs", "20", "--limit-train", "5000", "--lr-decay", "1", "--weight-decay", "0"))


# What cells cost (estimate): on a GPU the report's timings (catalog.py); on the CPU, pilot runs of TUNE_STUDY on
# this project's 2-core machine, 2 cells at a time: LeNet images/s per cell trained and evaluated, seconds to start.
CPU = dict(train_rate=2900, eval_rate=13000, start_seconds=6, workers=2)


def cell_config(cell, extra=(), tau=TAU_CANDIDATES[0], argv=None):
    """The config.Config the cell's script makes of `argv` (default its own; TUNED as `tau`) and `extra`, or exit 2."""
    return config.parse(cell.script, [*with_tau(argv or cell.argv, tau), *extra])


def with_tau(argv, tau):
    """argv with `tau`, written exactly, for the TUNED of a tuned cell (its tau until its tuning runs choose it)."""
    return [number_text(float(tau)) if a == "TUNED" else a for a in argv]


def cell_cost(cell, cpu, extra=()):
    """Seconds of one training cell (with the pass-through flags `extra`) on the CPU of CPU, or on the report's GPU."""
    c, entry = cell_config(cell, extra), catalog.DATASETS[cell.dataset]
    train, test = entry["sizes"]
    val = round(c.val_split * train)
    trained = min(c.limit_train or train, train - val)
    tested = min(c.limit_test or test, test)
    if cpu:
        return CPU["start_seconds"] + c.epochs * (trained / CPU["train_rate"] + (val + tested) / CPU["eval_rate"])
    return c.epochs * entry["gpu_epoch_seconds"] * trained / train


def estimate(cells, cpu=False, extra=()):
    """One line: what the training cells take (with the pass-through flags `extra`), and where measured."""
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


def choose_tau(rows, dataset, loss, candidates=None, logit_clip=None):
    """(tau, {tau: score}): the tau of best mean final noisy-validation accuracy at the highest rho (the test
    set takes no part). With `candidates`, only they count, and each must have a run, else tau is None. The
    loss behind LogitClip at `logit_clip` is another loss: its runs are chosen among apart."""
    def clip(r):
        return float(r["logit_clip"]) if r.get("logit_clip") not in ("", None) else None
    runs = [r for r in rows if r["dataset"] == dataset and r["loss"] == loss and clip(r) == logit_clip
            and all(r.get(k) not in ("", None) for k in ("val_acc", "tau", "rho"))
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


# The fair comparison (run_all.sh --tune; docs/tuning.md): selection.py chooses among each Family's candidates.

@dataclass(frozen=True)
class Family:
    """A loss of the comparison: fixed flags, and the one parameter whose candidates it tries."""
    key: str               # names it in cell ids and --losses
    label: str             # names it in tables
    flags: dict            # the flags every candidate shares
    param: str = None      # the tuned flag; None: untuned, one candidate
    values: tuple = ()

    def candidates(self):
        """[(id part, Row)] in the order of `values` (the order ties are broken in)."""
        if self.param is None:
            return [(self.key, Row(self.key, dict(self.flags), self.label))]
        return [(f"{self.key}-{self.param}{number_text(v)}", Row(self.key, {**self.flags, self.param: v},
                                                          f"{self.label} {SYMBOLS[self.param]} = {v:g}"))
                for v in self.values]


SYMBOLS = {"clip_norm": "clip", **{name: p["symbol"] for name, p in catalog.PARAMS.items()}}
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


@dataclass(frozen=True)
class Cell:
    """One command of the grid; `tuned` names the loss whose tau choose_tau picks just before the cell starts."""
    id: str
    dataset: str           # "synthetic" for the synthetic experiments
    script: str
    argv: tuple            # the script's flags, without --out (the runner adds it)
    folder: str = ""       # below the results folder
    tuning: bool = False   # --tune-tau's first phase: every tuning cell finishes before the grid
    tuned: str = ""


def rows_for(dataset, losses=None, *, taus=None, tune_tau=False, memorisation=False, logit_clip=None):
    """The rows of `dataset` selected by --losses (another registry loss is added with its defaults), with
    --taus (a sweep: each tau instead) or --tune-tau (tau later), each loss behind LogitClip with --logit-clip."""
    rows = memorisation_rows() if memorisation else report_rows(dataset)
    rows += [Row(name, {"loss": name}) for name in losses or () if name not in {r.key for r in rows}]
    rows = [r for r in rows if losses is None or r.key in losses]
    if logit_clip is not None:
        rows = [Row(f"{r.key}+lc{number_text(logit_clip)}", {**r.flags, "logit_clip": logit_clip}) for r in rows]
    out = []
    for row in rows:
        variants = [row] if "tau" not in row.flags else [Row(row.key, {**row.flags, "tau": t}) for t in taus] \
            if taus else [Row(row.key, {**row.flags, "tau": "TUNED"}, row.label)] if tune_tau else [row]
        out += [v for v in variants if v not in out]  # a sweep makes the rows that differ only in tau one
    return out


def cell_id(dataset, row, noise, seed, noise_seed=0):
    """e.g. mnist-phuber_ce-tau10-rho0.4-seed0; `noise` is the rho (or the human-noise key)."""
    tau = row.flags.get("tau")
    part = "" if tau is None else "-tuned" if tau == "TUNED" else f"-tau{number_text(tau)}"
    noise = noise if isinstance(noise, str) else f"rho{number_text(noise)}"
    # noise seed 0 is every table's: its cells are the same runs, with the same ids, in every selection
    return f"{dataset}-{row.key}{part}-{noise}-seed{seed}" + (f"-ns{noise_seed}" if noise_seed else "")


def cells(datasets=DEFAULT_DATASETS, *, losses=None, rhos=RHOS, trials=TRIALS, taus=None, tune_tau=False,
          candidates=TAU_CANDIDATES, val_split=VAL_SPLIT, quick=False, noise_seeds=(0,), memorisation=False,
          human=False, logit_clip=None, tune=False):
    """The numbered cells of a selection, in an order that depends only on it (a SLURM task finds its cell).
    tune: per dataset, rho (its choices complete before the next), TUNE family, candidate, seed. Else the tuning
    cells, then per dataset, row, rho (human: CIFAR-N key), noise seed, seed. memorisation: its rows and flags."""
    flags = (TUNE_STUDY if tune else MEMORISATION)["flags"] if memorisation else ()
    budget = (*flags, *(QUICK if quick else ()))
    held_out = ("--val-split", number_text(val_split), *budget)  # noisy training data, to choose on

    def cell(id, dataset, argv, folder, **kind):
        return Cell(id, dataset, catalog.DATASETS[dataset]["script"], ("--dataset", dataset, *argv), folder, **kind)
    if tune:
        prefix, folder = ("memorisation-tune-", f"{MEMORISATION['folder']}/tune") if memorisation else ("tune-", "tune")
        return [cell(f"{prefix}{dataset}-{part}-rho{number_text(rho)}-seed{seed}", dataset,
                     (*row.argv(), "--rho", number_text(rho), "--seed", str(seed), *held_out), folder)
                for dataset in datasets for rho in rhos for family in TUNE if losses is None or family.key in losses
                for part, row in family.candidates() for seed in range(trials)]
    found = []
    for dataset in [d for d in datasets if d != "synthetic"] if tune_tau else ():
        for row in rows_for(dataset, losses, tune_tau=True, logit_clip=logit_clip):
            for tau in candidates if row.flags.get("tau") == "TUNED" else ():  # at the highest rho, seed 0
                tuned = Row(row.key, {**row.flags, "tau": tau})
                found.append(cell(f"tau-tuning-{cell_id(dataset, tuned, max(rhos), 0)}", dataset,
                                  (*tuned.argv(), "--rho", number_text(max(rhos)), "--seed", "0", *held_out),
                                  "tuning", tuning=True))
    for dataset in datasets:
        if dataset == "synthetic":
            found += [Cell("synthetic-long_servedio", "synthetic", "synthetic_long_servedio.py",
                           ("--trials", str(20 if quick else SYNTHETIC_TRIALS)), "synthetic"),
                      Cell("synthetic-ding", "synthetic", "synthetic_ding.py", (), "synthetic")]
            continue
        noises = [(key, ("--noise", "human", "--noise-key", key)) for key in catalog.HUMAN_NOISE[dataset]["grid"]] \
            if human else [(rho, ("--rho", number_text(rho))) for rho in rhos]
        for row in rows_for(dataset, losses, taus=taus, tune_tau=tune_tau, memorisation=memorisation,
                            logit_clip=logit_clip):
            found += [cell(("memorisation-" if memorisation else "") + cell_id(dataset, row, column, seed, noise_seed),
                           dataset, (*row.argv(), *noise, *(("--noise-seed", str(noise_seed)) if noise_seed else ()),
                                     "--seed", str(seed), *budget),
                           MEMORISATION["folder"] if memorisation else "",
                           tuned=row.flags["loss"] if row.flags.get("tau") == "TUNED" else "")
                      for column, noise in noises for noise_seed in noise_seeds for seed in range(trials)]
    return found


def known_losses(tune=False):
    """The names --losses accepts: the report's row keys and every registry loss; with --tune, TUNE's."""
    return [f.key for f in TUNE] if tune else ["ce+clip"] + list(catalog.LOSSES)
