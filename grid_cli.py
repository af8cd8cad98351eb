"""run_all.sh's command line: the selection of grid.cells, its cells, the workers and the flags passed through
to every training script. Bad input is one line and exit status 2 (errors.Parser), before anything runs.
Standard library only, as config.py: run_all.sh --list resolves the cells without starting torch."""
import math
import os
import shlex
import subprocess
import sys

import catalog
import grid
from config import python
from errors import Parser
from results import whole_number


def parse_grid(argv):
    """run_all.sh's options (argv, default sys.argv[1:]; see its header): the selection, its cells, the workers."""
    p = Parser(prog="run_all.sh", description="Run the report's grid; see the header of run_all.sh.",
               usage="bash run_all.sh [options] [-- flags for every training script]")
    for flag in ("--datasets", "--losses", "--rhos", "--logit-clip", "--out", "--task", "--gpus", "--per-gpu",
                 "--cpu-workers", "--taus"):  # each value is checked below, with its own message
        p.add_argument(flag)
    for flag in ("--table3", "--memorisation", "--human-noise", "--quick", "--list", "--dry-run", "--slurm",
                 "--tune-tau", "--tune"):
        p.add_argument(flag, action="store_true")
    p.add_argument("--trials", default=str(grid.TRIALS))
    p.add_argument("--sbatch", default="")
    p.add_argument("--tau-candidates", default=",".join(f"{t:g}" for t in grid.TAU_CANDIDATES))
    p.add_argument("--val-split", default=f"{grid.VAL_SPLIT:g}")
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    if "--sbatch" in argv[:-1]:  # its value is sbatch's options, "--partition=gpu ...": argparse takes it attached
        i = argv.index("--sbatch")
        argv[i:i + 2] = [f"--sbatch={argv[i + 1]}"]
    opts = p.parse_args(argv)
    opts.argv, opts.extra = argv, extra  # as given: what SLURM's array tasks run again, with --task
    # --tune, --table3, --memorisation and --human-noise select a named setting of grid.py; the filters narrow it
    named = grid.TUNE_STUDY if opts.tune and opts.memorisation else \
        dict(datasets=catalog.DEFAULT_GRID, rhos=grid.RHOS) if opts.tune else grid.TABLE3 if opts.table3 else \
        grid.MEMORISATION if opts.memorisation else dict(datasets=tuple(catalog.HUMAN_NOISE), rhos=()) \
        if opts.human_noise else dict(datasets=grid.DEFAULT_DATASETS, rhos=grid.RHOS)
    if opts.table3 + opts.memorisation + opts.human_noise > 1:
        p.error("--table3, --memorisation and --human-noise are three settings: choose one")
    if opts.human_noise and (opts.rhos or opts.tune_tau):
        p.error(f"--human-noise takes no {'--rhos' if opts.rhos else '--tune-tau'}: the noise is the CIFAR-N files'")
    clash = [f for f, on in (("--tune-tau", opts.tune_tau), ("--taus", opts.taus), ("--table3", opts.table3),
                             ("--human-noise", opts.human_noise), ("--logit-clip", opts.logit_clip)) if on]
    if opts.tune and clash:  # its candidates are the grid: tau, LogitClip and the noise are chosen or swept there
        p.error(f"--tune takes no {clash[0]}: the fair comparison tries every candidate of grid.TUNE "
                "(tau and LogitClip's delta among them) at each rho")

    def distinct(flag, values):
        if len(set(values)) < len(values):
            p.error(f"{flag} {','.join(map(str, values))!r} repeats a value: give each once")
        return values

    def numbers(flag, text, ok, allowed):
        try:
            values = [float(v) for v in text.split(",")]
        except ValueError:
            values = None
        if not values or not all(ok(v) for v in values):
            p.error(f"{flag} {text!r} is not allowed: {allowed}")
        return distinct(flag, values)
    datasets = distinct("--datasets", opts.datasets.split(",")) if opts.datasets else list(named["datasets"])
    for d in datasets:
        if d != "synthetic" and d not in catalog.DATASETS:
            p.error(f"--datasets: {d!r} is not allowed: use synthetic, {', '.join(catalog.DATASETS)}")
    losses = distinct("--losses", opts.losses.split(",")) if opts.losses else named.get("losses")  # --table3's
    for loss in losses or ():
        if loss not in grid.known_losses(opts.tune):
            p.error(f"--losses: {loss!r} is not allowed{' with --tune' if opts.tune else ''}: use "
                    f"{', '.join(grid.known_losses(opts.tune))}")
    if not whole_number(opts.trials):
        p.error(f"--trials {opts.trials!r} is not allowed: a positive integer")
    rhos = numbers("--rhos", opts.rhos, lambda r: 0 <= r < 1, "noise rates in [0, 1)") if opts.rhos else named["rhos"]
    for setting, on, allowed in (("--human-noise", opts.human_noise, catalog.HUMAN_NOISE),  # none is synthetic's
                                 ("--memorisation", opts.memorisation, grid.MEMORISATION["datasets"]),
                                 ("--table3", opts.table3, catalog.DATASETS)):
        for d in datasets if on else ():
            if d not in allowed:
                p.error(f"--datasets: {d!r} is not allowed with {setting}: use {', '.join(sorted(allowed))}")
    clips = numbers("--logit-clip", opts.logit_clip, lambda d: 0 < d < math.inf, "one norm > 0, e.g. 1") \
        if opts.logit_clip else [None]
    if len(clips) > 1:
        p.error(f"--logit-clip {opts.logit_clip!r} is not allowed: one norm > 0, e.g. 1")
    taus = numbers("--taus", opts.taus, lambda t: 1 < t < math.inf, "each tau > 1") if opts.taus else None
    candidates = numbers("--tau-candidates", opts.tau_candidates, lambda t: 1 < t < math.inf, "each tau > 1")
    val_split = numbers("--val-split", opts.val_split, lambda v: 0 < v < 1, "a fraction in (0, 1)")[0]
    if taus and opts.tune_tau:
        p.error("--taus and --tune-tau exclude each other: a sweep fixes tau, tuning chooses it")
    for flag in ("--out", "--resume"):
        if flag in opts.extra:
            p.error(f"{flag} is not allowed after --: run_all.sh sets it (use run_all.sh --out)")
    try:
        opts.sbatch = shlex.split(opts.sbatch)
    except ValueError as e:
        p.error(f"--sbatch {opts.sbatch!r} is not allowed: {e}")
    if opts.tune and "synthetic" in datasets:
        p.error("--datasets: 'synthetic' is not allowed with --tune: its losses have no noisy validation data")
    opts.selection = dict(datasets=datasets, losses=losses, rhos=rhos, trials=1 if opts.quick else int(opts.trials),
                          taus=taus, tune_tau=opts.tune_tau, candidates=candidates, val_split=val_split,
                          quick=opts.quick, noise_seeds=grid.TABLE3["noise_seeds"] if opts.table3 else (0,),
                          memorisation=opts.memorisation, human=opts.human_noise, logit_clip=clips[0], tune=opts.tune)
    # Paths are the caller's: relative ones resolve against the directory run_all.sh was started in.
    opts.out = os.path.abspath(opts.out or ("results/quick" if opts.quick else "results"))
    opts.cells = grid.cells(**opts.selection)
    if not opts.cells:
        p.error("the filters select no cell")
    if opts.task is not None and not (whole_number(opts.task) is not None and int(opts.task) < len(opts.cells)):
        p.error(f"--task {opts.task!r} is not allowed: 0 to {len(opts.cells) - 1}")
    opts.gpus = check_gpus(p, opts.gpus) if opts.gpus else None
    cores = os.cpu_count() or 1
    if opts.cpu_workers is not None and (opts.gpus or opts.slurm or not 1 <= (whole_number(opts.cpu_workers) or 0)
                                         <= cores):
        p.error(f"--cpu-workers {opts.cpu_workers!r} is not allowed: 1 to {cores} (the CPU cores here), "
                "without --gpus or --slurm")
    training = [c for c in opts.cells if c.dataset != "synthetic"]
    if opts.cpu_workers is not None and training:  # a CPU worker sees no GPU: a cell told to use one would fail
        device = grid.cell_config(training[0], opts.extra).device or "cpu"  # as the training scripts read it
        if device.split(":")[0] != "cpu":
            p.error(f"--device {device!r} is not allowed with --cpu-workers: its cells run on the CPU "
                    "(-- --device cpu)")
    per_gpu = check_per_gpu(p, opts, cores)
    # each worker's CUDA_VISIBLE_DEVICES: a GPU (--per-gpu K: K workers each, in turn, so that the first
    # cells spread over the GPUs); "" for a CPU worker (no GPU); None: leave it as it is
    opts.workers = (opts.gpus or []) * per_gpu or [""] * int(opts.cpu_workers or 0) or [None]
    return opts


def check_per_gpu(parser, opts, cores):
    """--per-gpu K: K cells at a time on each GPU of --gpus (default 1). Each cell is a process that
    needs a CPU core to feed its GPU, so all of them together get at most the cores here."""
    if opts.per_gpu is None:
        return 1
    k, gpus = opts.per_gpu, len(opts.gpus or ())
    if not gpus:
        parser.error(f"--per-gpu {k!r} is not allowed without --gpus: it runs K cells on each GPU listed there, "
                     "e.g. --gpus 0 --per-gpu 4")
    if opts.slurm:
        parser.error(f"--per-gpu {k!r} is not allowed with --slurm: each array task runs one cell on the GPU SLURM "
                     "gives it")
    most = max(1, cores // gpus)
    if not 1 <= (whole_number(k) or 0) <= most:
        parser.error(f"--per-gpu {k!r} is not allowed: 1 to {most} cells per GPU ({gpus} GPU(s) and "
                     f"{cores} CPU cores here: a core per cell)")
    return int(k)


def check_gpus(parser, text):
    """Each worker's CUDA_VISIBLE_DEVICES: ids index the caller's (SLURM sets it) if set, else the GPUs torch sees."""
    ids = text.split(",")
    if not all(whole_number(i) is not None for i in ids) or len(set(ids)) < len(ids):
        parser.error(f"--gpus {text!r} is not allowed: distinct integer GPU ids, e.g. 0,1,2,3")
    visible = [v for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if "CUDA_VISIBLE_DEVICES" not in os.environ:
        probe = subprocess.run([python(), "-c", "import torch; print(torch.cuda.device_count())"],
                               capture_output=True, text=True)
        visible = [str(i) for i in range(int(probe.stdout.strip() or 0))] if probe.returncode == 0 else []
    if any(int(i) >= len(visible) for i in ids):
        parser.error(f"--gpus {text!r} is not allowed: {len(visible)} GPU(s) visible here"
                     + (f" (ids 0-{len(visible) - 1})" if visible else ""))
    return [visible[int(i)] for i in ids]
