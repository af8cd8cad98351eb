"""Run the grid of grid.py: here, K workers per GPU (default 1), or as a SLURM job array; then aggregate.py.
The engine behind run_all.sh (see its header); exit status as run_all.sh's, and 3 when --task's cell has no
data. A cell is done when its run name, resolved as its script would, has a finished row in the summary."""
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time

import grid
import grid_cli
import results
import slurm
from config import python
from errors import Failure, edge

HERE = os.path.dirname(os.path.abspath(__file__))
SKIPPED, BAD_INPUT = 3, 2  # the training scripts' exit status for unavailable data and for bad input


def command(cell, opts, argv=None):
    """The cell's command line, its script by absolute path: relative paths (-- --data-dir) stay the caller's."""
    out = os.path.join(opts.out, cell.folder) if cell.folder else opts.out
    cmd = [python(), os.path.join(HERE, cell.script), *(argv or cell.argv), "--out", out]
    if cell.dataset != "synthetic":
        cmd += ["--resume", *(["--device", "cuda"] if opts.gpus else []), *opts.extra]
    return cmd


def resolve(cell, opts):
    """(argv, done) of a cell: a tuned cell gets the tau its tuning runs chose (None: not yet)."""
    argv = list(cell.argv)
    if cell.tuned:  # chosen among exactly this selection's tuning runs (a tuning folder may hold others)
        summary = os.path.join(opts.out, "tuning", "summary.csv")
        runs = {run_name(c, opts) for c in opts.cells if c.tuning and c.dataset == cell.dataset}
        rows = [r for r in results.summary_rows(summary) if r["run"] in runs]
        tau, _ = grid.choose_tau(rows, cell.dataset, cell.tuned, opts.selection["candidates"],
                                 opts.selection["logit_clip"])
        if tau is None:
            return None, False
        argv = grid.with_tau(argv, tau)
    if cell.dataset == "synthetic":
        return argv, os.path.exists(os.path.join(opts.out, cell.folder, cell.script[len("synthetic_"):-3] + ".csv"))
    summary = os.path.join(opts.out, cell.folder, "summary.csv")
    return argv, results.finished_row(summary, run_name(cell, opts, argv)) is not None


def run_name(cell, opts, argv=None):
    """The run a training cell makes, resolved as its script would (no torch): its result-file key."""
    return results.run_name(grid.cell_config(cell, opts.extra, argv=argv).settings())


class Outcomes:
    """What happened so far, shared by the workers: outcomes, and durations per dataset (for the ETA)."""

    def __init__(self, cells, workers):
        self.cells, self.workers, self.lock, self.start = cells, workers, threading.Lock(), time.monotonic()
        self.outcomes, self.durations, self.failures, self.begun = {}, {}, [], set()

    def record(self, cell, outcome, seconds=None, why=""):
        with self.lock:
            self.outcomes[cell.id] = outcome
            if outcome == "ran":
                self.durations.setdefault(cell.dataset, []).append(seconds)
            if outcome == "failed":
                self.failures.append(f"{cell.id}: {why}")

    def counts(self):
        n = lambda o: sum(v == o for v in self.outcomes.values())  # noqa: E731
        return (f"{n('ran')} ran, {n('done')} already finished, {n('skipped')} skipped (data unavailable), "
                f"{n('failed')} failed")

    def say(self, text):
        """Print a whole line: workers print concurrently, and print() writes text and newline apart."""
        with self.lock:
            print(text, flush=True)

    def line(self, cell):
        """'cell k/N: id (counts; elapsed, ETA)', k counting every cell begun or settled so far."""
        with self.lock:
            self.begun.add(cell.id)
            k = len(self.begun | {c for c, v in self.outcomes.items() if v in ("done", "skipped")})
            durations = self.durations.get(cell.dataset)
            left = sum(c.dataset == cell.dataset and c.id not in self.outcomes for c in self.cells)
            # the dataset's cells left (this one too) at its mean duration so far, shared by the workers
            eta = f", {cell.dataset} ETA {clock(sum(durations) / len(durations) * left / min(self.workers, left))}" \
                if durations else ""
            return (f"[{time.strftime('%H:%M:%S')}] cell {k}/{len(self.cells)}: {cell.id} ({self.counts()}; "
                    f"{clock(time.monotonic() - self.start)} elapsed{eta})")


def clock(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def last_line(text, empty="(no output)"):
    """The last non-blank line of a process's output, stripped: the one line that says why it failed."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else empty


class Stopper:
    """SIGINT and SIGTERM from the runner's first line on: no new process starts, every running child gets
    SIGTERM. A child shares the runner's process group, so what stops the group (Ctrl-C, `timeout`) stops it."""

    def __init__(self):
        self.stopping, self.lock, self.running, self.signum = threading.Event(), threading.Lock(), set(), None
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self.stop)

    def stop(self, signum, frame):
        self.signum = signum
        self.stopping.set()
        with self.lock:
            for proc in self.running:
                proc.send_signal(signal.SIGTERM)  # a cell stops resumably: its checkpoints are whole

    def run(self, cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=None):
        """(exit status, stdout, stderr) of cmd run to its end; (None, "", "") once stopping."""
        with self.lock:
            if self.stopping.is_set():
                return None, "", ""
            proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, env=env, text=True)
            self.running.add(proc)
        out, err = proc.communicate()
        with self.lock:
            self.running.discard(proc)
        return proc.returncode, out, err


def run_cells(cells, opts, tally, unavailable, stopper):
    """The cells, run by one thread per worker (--per-gpu K per GPU, or one) taking them from one queue."""
    queue = list(cells)

    def work(gpu):
        while not stopper.stopping.is_set():
            with stopper.lock:
                if not queue:
                    return
                cell = queue.pop(0)
            try:
                run_cell(cell, gpu, opts, tally, unavailable=unavailable, stopper=stopper)
            except BaseException as e:  # no cell may vanish without an outcome (a worker thread dies silently)
                tally.record(cell, "failed", why=f"the runner could not run it: {type(e).__name__}: {e}")
    threads = [threading.Thread(target=work, args=(gpu,)) for gpu in opts.workers]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.2)  # short joins: the main thread must stay free to handle signals


def run_cell(cell, gpu, opts, tally, *, unavailable, stopper):
    """Run the cell on `gpu` (a CUDA_VISIBLE_DEVICES value) unless done or unavailable; record its outcome."""
    if cell.dataset in unavailable:
        return tally.record(cell, "skipped")
    argv, done = resolve(cell, opts)
    if argv is None:
        return tally.record(cell, "failed", why="no tau chosen: its tuning cells have not all finished")
    if done:
        return tally.record(cell, "done")
    busy = cell.dataset != "synthetic" and results.lock_holder(
        os.path.join(opts.out, cell.folder, "runs", run_name(cell, opts, argv)))
    if busy:  # a cell a killed runner left running: its log is still being written, by it
        why = f"its run is in progress in another process (pid {busy}); not started"
        tally.say(f"    FAILED: {cell.id}: {why}")
        return tally.record(cell, "failed", why=why)
    tally.say(tally.line(cell))
    log = os.path.join(opts.out, "logs", f"{cell.id}.log")
    env = dict(os.environ, **({"CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else {}))
    # CPU workers, and workers sharing a GPU (--per-gpu), share the cores, not each all of them
    if (gpu == "" or opts.workers.count(gpu) > 1) and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // len(opts.workers)))
    start, cmd = time.monotonic(), command(cell, opts, argv)
    with open(log, "a") as f:
        f.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')}: {shlex.join(cmd)}\n")
        f.flush()
        code, _, _ = stopper.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    if stopper.stopping.is_set():  # no outcome: it resumes on a rerun
        return
    if code == 0:
        tally.record(cell, "ran", time.monotonic() - start)
    elif code == SKIPPED:
        tally.record(cell, "skipped")
    else:
        with open(log, errors="replace") as f:
            why = last_line(f.read(), "(empty log)")
        tally.record(cell, "failed", why=f"exit {code}: {why} (see {log})")
        tally.say(f"    FAILED (exit {code}): {why}")


def check_flags(cells, opts):
    """{cell: config.Config} of the training cells with `extra`: a flag a script rejects exits 2 with its line."""
    tau = opts.selection["candidates"][0]  # a tuned cell's, to check its flags: any candidate will do
    return {c: grid.cell_config(c, opts.extra, tau) for c in cells if c.dataset != "synthetic"}


def preflight(configs, opts, stopper):
    """{dataset: why it is unavailable}, from the training scripts' own check of each dataset's files (and
    CIFAR-N label set) and of the device, before any cell runs; a Failure for bad input."""
    unavailable, inputs = {}, {}
    for cell, config in configs.items():
        inputs.setdefault((cell.dataset, config.noise_key), cell)
    for (dataset, key), cell in inputs.items():
        if dataset in unavailable:
            continue
        argv = grid.with_tau(cell.argv, opts.selection["candidates"][0])
        code, out, err = stopper.run([*command(cell, opts, argv), "--prepare-data"])
        why = last_line(err or out).removeprefix("error: ")
        if stopper.stopping.is_set():
            break
        if code == SKIPPED:
            unavailable[dataset] = why
            print(f"skipping {dataset}: {why}", flush=True)
        elif code == BAD_INPUT:
            raise Failure(f"{dataset}{' ' + key if key else ''}: {why}")
        elif code != 0:
            raise Failure(f"{dataset}: the training script cannot start (exit {code}): {why}", code=1)
    return unavailable


def check_summaries(cells, opts):
    """A summary row that a finishing run could not rewrite stops the grid before any cell runs."""
    folders = {c.folder for c in cells} | ({"tuning"} if any(c.tuned for c in cells) else set())
    for folder in sorted(folders):
        try:
            results.summary_rows(os.path.join(opts.out, folder, "summary.csv"))
        except (results.BadFile, OSError) as e:
            raise Failure(str(e) if isinstance(e, results.BadFile) else f"{e.filename}: {e.strerror}")


def run_here(cells, opts, stopper):
    """The cells in this shell session; then aggregate.py. Returns the exit status."""
    configs = check_flags(cells, opts)
    check_summaries(cells, opts)
    unavailable = preflight(configs, opts, stopper) if opts.task is None else {}
    tally = Outcomes(cells, len(opts.workers))
    os.makedirs(os.path.join(opts.out, "logs"), exist_ok=True)  # only now: bad input writes nothing
    run_cells([c for c in cells if c.tuning], opts, tally, unavailable, stopper)  # --tune-tau: the candidates first
    run_cells([c for c in cells if not c.tuning], opts, tally, unavailable, stopper)
    if stopper.stopping.is_set():
        print(f"interrupted: {tally.counts()}; rerun the same command to resume", flush=True)
        return 128 + stopper.signum
    print(f"summary: {tally.counts()} in {clock(time.monotonic() - tally.start)}", flush=True)
    for line in tally.failures:
        print(f"  failed: {line}")
    failed = bool(tally.failures) or len(tally.outcomes) < len(cells)
    if opts.task is None and {"ran", "done"} & set(tally.outcomes.values()):
        code, out, err = stopper.run([python(), os.path.join(HERE, "aggregate.py"), "--results", opts.out])
        if stopper.stopping.is_set():
            print("interrupted during aggregate.py; rerun it, or the same command", flush=True)
            return 128 + stopper.signum
        print(last_line(out + err) if code == 0 else f"aggregate.py FAILED (exit {code}): {last_line(err or out)}")
        failed |= code != 0
    return 1 if failed else SKIPPED if opts.task is not None and "skipped" in tally.outcomes.values() else 0


@edge()
def main(argv=None):
    stopper = Stopper()  # first: a signal at any point stops what the runner started
    try:
        opts = grid_cli.parse_grid(argv)
    except SystemExit:
        if stopper.stopping.is_set():
            return 128 + stopper.signum
        raise
    if opts.list or opts.dry_run:  # `| head` closes the pipe: stop quietly, as a Unix tool does
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    if opts.list:
        check_flags(opts.cells, opts)  # the pass-through flags: the estimate reads them as the scripts will
        main_grid = {c.id for c in grid.cells(datasets=opts.selection["datasets"])} if opts.table3 else set()
        for i, cell in enumerate(opts.cells):
            print(f"{i:4d}  {cell.id}" + ("   (a cell of the main grid too: one run)" if cell.id in main_grid else ""))
        # on stderr: stdout is one line per cell
        print(grid.estimate(opts.cells, cpu=opts.memorisation, extra=opts.extra), file=sys.stderr)
        return 0
    cells = [opts.cells[int(opts.task)]] if opts.task is not None else opts.cells
    if opts.dry_run:  # a tuned cell's tau as chosen, once its tuning cells have finished (else TUNED)
        check_summaries(cells, opts)
        for cell in cells:
            print(shlex.join(command(cell, opts, cell.tuned and resolve(cell, opts)[0])))
        return 0
    try:  # before the pre-flight checks: what they take long to check must be writable
        results.check_writable(opts.out)
    except ValueError as e:
        raise Failure(f"--out {e}")
    if opts.slurm and opts.task is None:  # an array task (--task) runs its cell here
        if not shutil.which("sbatch"):
            raise Failure("--slurm: sbatch not found")
        check_flags(opts.cells, opts)  # the pass-through flags, before anything is submitted
        return slurm.submit(opts, python())
    return run_here(cells, opts, stopper)


if __name__ == "__main__":
    sys.exit(main())
