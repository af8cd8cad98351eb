"""run_all.sh --slurm: the grid as SLURM job arrays (see docs/grid.md and ../shared/notes/slurm.md).

Task i of an array runs `run_all.sh <the same selection> --task i`, which finds the same cell: the
order of grid.cells depends only on the selection.
"""
import os
import shlex
import subprocess

import cli

HERE = os.path.dirname(os.path.abspath(__file__))


def submit(opts, python):
    """One job array per phase (task i runs `run_all.sh <same selection> --task i`) and an
    aggregation job that runs when the grid's array ends."""
    s = opts.selection
    flags = ["--datasets", ",".join(s["datasets"]), "--trials", str(s["trials"]), "--out", opts.out]
    flags += ["--rhos", ",".join(map(repr, s["rhos"]))] if s["rhos"] else []
    flags += ["--losses", ",".join(s["losses"])] if s["losses"] else []
    flags += ["--quick"] if s["quick"] else []
    flags += ["--table3"] if opts.table3 else []
    flags += ["--memorisation"] if opts.memorisation else []
    flags += ["--human-noise"] if s["human"] else []
    flags += ["--logit-clip", repr(s["logit_clip"])] if s["logit_clip"] is not None else []
    flags += ["--taus", ",".join(map(repr, s["taus"]))] if s["taus"] else []
    flags += ["--tune-tau", "--tau-candidates", ",".join(map(repr, s["candidates"]))] if s["tune_tau"] else []
    flags += ["--tune"] if s["tune"] else []
    flags += ["--val-split", repr(s["val_split"])] if s["tune_tau"] or s["tune"] else []
    worker = shlex.join(["bash", os.path.join(HERE, "run_all.sh"), *flags, "--task"]) + " $SLURM_ARRAY_TASK_ID"
    worker += (" -- " + shlex.join(opts.extra)) if opts.extra else ""
    os.makedirs(os.path.join(opts.out, "logs"), exist_ok=True)
    common = [*opts.sbatch, f"--chdir={os.getcwd()}"]

    def sbatch(*args):
        done = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True)
        if done.returncode != 0:
            raise cli.Failure(f"sbatch failed: {(done.stderr.strip().splitlines() or ['no message'])[-1]}", code=1)
        return done.stdout.strip().split(";")[0]
    n_tuning = sum(c.tuning for c in opts.cells)
    after = []
    if n_tuning:  # --tune-tau: the grid's array waits for every tuning cell to succeed
        tuning = sbatch("--job-name=phuber-tune", f"--array=0-{n_tuning - 1}", *common,
                        f"--output={opts.out}/logs/slurm-%A_%a.out", "--wrap", worker)
        after = [f"--dependency=afterok:{tuning}"]
        print(f"submitted tuning array {tuning} ({n_tuning} cells)")
    job = sbatch("--job-name=phuber", f"--array={n_tuning}-{len(opts.cells) - 1}", *after, *common,
                 f"--output={opts.out}/logs/slurm-%A_%a.out", "--wrap", worker)
    agg = sbatch("--job-name=phuber-aggregate", f"--dependency=afterany:{job}", *common,
                 f"--output={opts.out}/logs/slurm-aggregate-%j.out", "--wrap",
                 shlex.join([python, os.path.join(HERE, "aggregate.py"), "--results", opts.out]))
    print(f"submitted job array {job} ({len(opts.cells) - n_tuning} cells) and aggregation job {agg} "
          "(runs when the array ends)")
    return 0
