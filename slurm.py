"""run_all.sh --slurm: the grid as SLURM job arrays (docs/grid.md, ../shared/notes/slurm.md)."""
import os
import shlex
import subprocess

from errors import Failure

HERE = os.path.dirname(os.path.abspath(__file__))


def submit(opts, python):
    """A job array per phase and an aggregation job after the grid's. Task i reruns run_all.sh with the original
    arguments plus `--task i`: cell i of the same selection, run whatever else they say (--slurm, --sbatch)."""
    worker = shlex.join(["bash", os.path.join(HERE, "run_all.sh"), *opts.argv, "--task"]) + " $SLURM_ARRAY_TASK_ID"
    worker += (" -- " + shlex.join(opts.extra)) if opts.extra else ""
    os.makedirs(os.path.join(opts.out, "logs"), exist_ok=True)
    common, task_log = [*opts.sbatch, f"--chdir={os.getcwd()}"], f"--output={opts.out}/logs/slurm-%A_%a.out"

    def sbatch(*args, wrap=worker):
        done = subprocess.run(["sbatch", "--parsable", *args, "--wrap", wrap], capture_output=True, text=True)
        if done.returncode != 0:
            raise Failure(f"sbatch failed: {(done.stderr.strip().splitlines() or ['no message'])[-1]}", code=1)
        return done.stdout.strip().split(";")[0]
    n_tuning = sum(c.tuning for c in opts.cells)
    after = []
    if n_tuning:  # --tune-tau: the grid's array waits for every tuning cell to succeed
        tuning = sbatch("--job-name=phuber-tune", f"--array=0-{n_tuning - 1}", *common, task_log)
        after = [f"--dependency=afterok:{tuning}"]
        print(f"submitted tuning array {tuning} ({n_tuning} cells)")
    job = sbatch("--job-name=phuber", f"--array={n_tuning}-{len(opts.cells) - 1}", *after, *common, task_log)
    agg = sbatch("--job-name=phuber-aggregate", f"--dependency=afterany:{job}", *common,
                 f"--output={opts.out}/logs/slurm-aggregate-%j.out",
                 wrap=shlex.join([python, os.path.join(HERE, "aggregate.py"), "--results", opts.out]))
    print(f"submitted job array {job} ({len(opts.cells) - n_tuning} cells) and aggregation job {agg} "
          "(runs when the array ends)")
    return 0
