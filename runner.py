"""Run the grid of grid.py: here, K workers per GPU (default 1), or as a SLURM job array; then aggregate.py.

This is the engine behind run_all.sh (see `bash run_all.sh --help`). Each cell runs as its own
process, logging to OUT/logs/<cell>.log. Whether a cell is done comes from the result files: its run
name is resolved as the training script would (config.parse) and looked up in OUT/summary.csv.
Before any cell runs, every training script checks the pass-through flags and each dataset's files.
SIGINT and SIGTERM stop every worker and the cell it runs; everything finished stays, and a rerun
resumes the rest. Exit status: 0 all cells ran or were done, 1 something failed, 2 bad input,
3 (--task) the cell's data are unavailable, 130/143 interrupted.
"""
import os
import shlex
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
    """The cell's full command line: the script by absolute path, so children can run in the
    caller's directory, where relative pass-through paths (--data-dir) mean what the caller meant."""
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
    """What happened so far, shared by the workers: each cell's outcome, counts, and cell durations per
    dataset (for the ETA of the line printed before each cell)."""

    def __init__(self, cells, workers=1):
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
            self.begun.add(cell.id)  # k: the cells begun or settled, each once
            k = len(self.begun | {c for c, v in self.outcomes.items() if v in ("done", "skipped")})
            durations = self.durations.get(cell.dataset)
            left = sum(c.dataset == cell.dataset and c.id not in self.outcomes for c in self.cells)
            # the dataset's cells left (this one too), at the mean duration so far, shared by the workers
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


def last_line_of_log(path):
    """The last line of a cell's log, or why the log cannot be read."""
    try:
        with open(path, errors="replace") as f:
            return last_line(f.read(), "(empty log)")
    except OSError as e:
        return str(e)


class Stopper:
    """SIGINT and SIGTERM, from the runner's first line on: no new process starts, and every running
    child (cell, pre-flight check, aggregate.py) gets SIGTERM. A child shares the runner's process
    group, so what stops the group (Ctrl-C at a terminal, `timeout`, a kill of the group) stops it too."""

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

    def popen(self, cmd, **kwargs):
        """The started process, or None once stopping; call done(proc) when it has ended."""
        with self.lock:
            if self.stopping.is_set():
                return None
            proc = subprocess.Popen(cmd, **kwargs)
            self.running.add(proc)
            return proc

    def done(self, proc):
        with self.lock:
            self.running.discard(proc)

    def run(self, cmd):
        """Run cmd to its end, capturing its output, unless stopping; (exit status, stdout, stderr)."""
        proc = self.popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if proc is None:
            return None, "", ""
        out, err = proc.communicate()
        self.done(proc)
        return proc.returncode, out, err

    def status(self):
        return 128 + self.signum


class Workers:
    """Cells run by one thread per worker (--per-gpu K per GPU, or one), taking them from one queue."""

    def __init__(self, opts, tally, unavailable, stopper):
        self.opts, self.tally, self.unavailable, self.stopper = opts, tally, unavailable, stopper

    def run(self, cells):
        queue = list(cells)
        threads = [threading.Thread(target=self.work, args=(queue, gpu)) for gpu in self.opts.workers]
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(0.2)  # short joins: the main thread must stay free to handle signals

    def work(self, queue, gpu):
        while not self.stopper.stopping.is_set():
            with self.stopper.lock:
                if not queue:
                    return
                cell = queue.pop(0)
            try:
                self.run_cell(cell, gpu)
            except BaseException as e:  # no cell may vanish without an outcome (a worker thread dies silently)
                self.tally.record(cell, "failed", why=f"the runner could not run it: {type(e).__name__}: {e}")

    def run_cell(self, cell, gpu):
        """Run one cell in its process on `gpu` (a CUDA_VISIBLE_DEVICES value), unless it is done or
        unavailable; record its outcome."""
        opts, tally = self.opts, self.tally
        if cell.dataset in self.unavailable:
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
        start = time.monotonic()
        with open(log, "a") as f:
            f.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')}: {shlex.join(command(cell, opts, argv))}\n")
            f.flush()
            proc = self.stopper.popen(command(cell, opts, argv), stdout=f, stderr=subprocess.STDOUT, env=env)
            if proc is None:
                return
            code = proc.wait()
            self.stopper.done(proc)
        if self.stopper.stopping.is_set():
            return
        if code == 0:
            tally.record(cell, "ran", time.monotonic() - start)
        elif code == SKIPPED:
            tally.record(cell, "skipped")
        else:
            why = last_line_of_log(log)
            tally.record(cell, "failed", why=f"exit {code}: {why} (see {log})")
            tally.say(f"    FAILED (exit {code}): {why}")


def check_flags(cells, opts):
    """Every training cell's flags, with the pass-through ones, as its script parses them: a flag one
    cell rejects (say --q for PHuber-CE) stops everything before any cell runs, with its message."""
    for cell in cells:
        if cell.dataset != "synthetic":
            grid.cell_config(cell, opts.extra, opts.selection["candidates"][0])  # exits 2 with the script's line


def preflight(cells, opts, stopper):
    """Check every input of the cells (each dataset's files, each CIFAR-N label set the cells train on)
    and the device with the training scripts themselves, before any cell runs. Returns {dataset: why
    it is unavailable}; a Failure for bad input."""
    unavailable, inputs = {}, {}
    for cell in cells:  # one check per dataset and label set: --noise-key picks the labels of a CIFAR-N file
        if cell.dataset != "synthetic":
            key = grid.cell_config(cell, opts.extra, opts.selection["candidates"][0]).noise_key
            inputs.setdefault((cell.dataset, key), cell)
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
    """The summary files the cells look up and add to: a bad row stops the grid before any cell runs
    (a run that finishes rewrites its summary whole, and never drops a row it cannot read)."""
    folders = {c.folder for c in cells} | ({"tuning"} if any(c.tuned for c in cells) else set())
    for folder in sorted(folders):
        try:
            results.summary_rows(os.path.join(opts.out, folder, "summary.csv"))
        except (results.BadFile, OSError) as e:
            raise Failure(str(e) if isinstance(e, results.BadFile) else f"{e.filename}: {e.strerror}")


def run_here(opts, stopper):
    """All cells (or --task's one) in this shell session; then aggregate.py. Returns the exit status."""
    cells = [opts.cells[int(opts.task)]] if opts.task is not None else opts.cells
    check_flags(cells, opts)
    check_summaries(cells, opts)
    unavailable = preflight(cells, opts, stopper) if opts.task is None else {}
    tally = Outcomes(cells, len(opts.workers))
    os.makedirs(os.path.join(opts.out, "logs"), exist_ok=True)  # only now: bad input writes nothing
    workers = Workers(opts, tally, unavailable, stopper)
    workers.run([c for c in cells if c.tuning])  # --tune-tau: every candidate finishes before a tau is chosen
    workers.run([c for c in cells if not c.tuning])
    if stopper.stopping.is_set():
        print(f"interrupted: {tally.counts()}; rerun the same command to resume", flush=True)
        return stopper.status()
    print(f"summary: {tally.counts()} in {clock(time.monotonic() - tally.start)}", flush=True)
    for line in tally.failures:
        print(f"  failed: {line}")
    failed = bool(tally.failures) or len(tally.outcomes) < len(cells)
    if opts.task is None and {"ran", "done"} & set(tally.outcomes.values()):
        code, out, err = stopper.run([python(), os.path.join(HERE, "aggregate.py"), "--results", opts.out])
        if stopper.stopping.is_set():
            print("interrupted during aggregate.py; rerun it, or the same command", flush=True)
            return stopper.status()
        print(last_line(out + err) if code == 0 else f"aggregate.py FAILED (exit {code}): {last_line(err or out)}")
        failed |= code != 0
    if failed:
        return 1
    return SKIPPED if opts.task is not None and "skipped" in tally.outcomes.values() else 0


@edge()  # a Failure raised below: its one line on stderr and its exit status
def main(argv=None):
    stopper = Stopper()  # first: a signal at any point stops what the runner started
    try:
        opts = grid_cli.parse_grid(argv)
    except SystemExit:
        if stopper.stopping.is_set():
            return stopper.status()
        raise
    if opts.list or opts.dry_run:  # `| head` closes the pipe: stop quietly, as a Unix tool does
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    if opts.list:
        check_flags(opts.cells, opts)  # the pass-through flags: the estimate reads them as the scripts will
        main_grid = {c.id for c in grid.cells(datasets=opts.selection["datasets"])} if opts.table3 else set()
        for i, cell in enumerate(opts.cells):
            print(f"{i:4d}  {cell.id}" + ("   (a cell of the main grid too: one run)" if cell.id in main_grid else ""))
        print(grid.estimate(opts.cells, cpu=opts.memorisation, extra=opts.extra), file=sys.stderr)  # stdout: one line per cell
        return 0
    if opts.dry_run:  # a tuned cell's tau as chosen, once its tuning cells have finished (else TUNED)
        cells = [opts.cells[int(opts.task)]] if opts.task is not None else opts.cells
        check_summaries(cells, opts)
        for cell in cells:
            print(shlex.join(command(cell, opts, cell.tuned and resolve(cell, opts)[0])))
        return 0
    try:  # before the pre-flight checks: what they take long to check must be writable
        results.check_writable(opts.out)
    except ValueError as e:
        raise Failure(f"--out {e}")
    if opts.slurm and opts.task is None:  # an array task (--task) runs its cell here
        if subprocess.run(["sh", "-c", "command -v sbatch"], capture_output=True).returncode != 0:
            raise Failure("--slurm: sbatch not found")
        check_flags(opts.cells, opts)  # the pass-through flags, before anything is submitted
        return slurm.submit(opts, python())
    return run_here(opts, stopper)


if __name__ == "__main__":
    sys.exit(main())
