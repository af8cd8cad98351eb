"""Result files, standard library only: every script can import this without torch.

    SCHEMA          which summary column is a setting, a metric or provenance (one definition,
                    used by the writer and by aggregate.py)
    run_name        a run's folder name: readable settings plus a hash of all of them
    write_atomic    write a file so that a reader, or a kill, never sees half of it
    run_lock        one process per run folder
    check_writable  whether results can go to a folder, checked before any work
    write_csv, read_csv, record_summary, finished_row, locked
    versions, pyplot, save_figure
"""
import contextlib
import csv
import fcntl
import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile

import registry

# ---------------------------------------------------------------------------------------------
# The schema of result rows. A summary row is run + settings + the final epoch's metrics +
# provenance, and every one of its columns is exactly one of:
#   setting     what was run: runs are pooled (as trials of one table cell) only when every setting
#               but the seed agrees; the loss settings name the table row, rho its column
#   metric      what was measured
#   provenance  where, when and on what it ran: recorded, never compared
LOSS_SETTINGS = ("loss", *registry.param_names(), "clip_norm", "clip_mode")
SETTINGS = LOSS_SETTINGS + (
    "dataset", "model", "rho", "noise", "noise_features", "noise_key", "noise_file_sha256", "noise_seed", "seed", "val_split", "epochs", "batch_size", "lr",
    "weight_decay", "limit_train", "limit_test", "amp", "channels_last",
    "init", "lr_decay", "lr_decay_steps",         # train_mnist.py
    "momentum", "milestones", "lr_gamma")         # train_cifar.py
METRICS = ("train_loss", "train_acc", "train_clean_acc", "memorised", "corrupted_clean_acc", "test_loss",
           "test_nll", "test_ece", "test_acc", "val_acc", "val_clean_acc", "clipped_clean", "clipped_corrupted",
           "grad_norm_clean", "grad_norm_corrupted")
PROVENANCE = ("run", "step", "epoch_seconds", "images_per_second", "train_size", "val_size", "test_size",
              "flip_rate", "label_hash", "wall_seconds", "device", "device_name", "python", "torch", "torchvision",
              "numpy", "code", "finished")
# The settings that make a cell of the grid: two runs that agree on these and differ in others are
# the same cell run with changed settings (say --lr), which --resume must not mix up.
CELL = LOSS_SETTINGS + ("dataset", "model", "rho", "noise", "noise_key", "noise_seed", "seed")
SCHEMA = {**{c: "setting" for c in SETTINGS}, **{c: "metric" for c in METRICS},
          **{c: "provenance" for c in PROVENANCE}}
# An epochs.csv row: the epoch, its steps so far and learning rate, its metrics and its speed.
EPOCH_COLUMNS = ("epoch", "step", "lr", *METRICS, "epoch_seconds", "images_per_second")


def unclassified(columns, epochs=False):
    """The columns the schema does not know, in a summary row (or an epochs.csv row)."""
    return [c for c in columns if c not in (EPOCH_COLUMNS if epochs else SCHEMA)]


def run_name(config):
    """Readable prefix plus a hash of every setting that has a value, so a grid never overwrites
    itself. Unset (None) settings are left out: a setting added later whose default is None (a new
    loss parameter, say) leaves the name of every run made before it unchanged."""
    digest = hashlib.sha256(json.dumps({k: v for k, v in config.items() if v is not None},
                                       sort_keys=True).encode()).hexdigest()[:8]
    parts = [config["dataset"], config["model"], config["loss"]]
    parts += [f"{k}{config[k]:g}" for k in registry.param_names() if config.get(k) is not None]
    if config["clip_norm"] is not None:
        parts.append(f"clip{config['clip_norm']:g}" + ("pe" if config["clip_mode"] == "per-example" else ""))
    noise = config["noise_key"] if config["noise"] == "human" else f"{config['noise'][:3]}{config['rho']:g}"
    parts += [noise, f"ns{config['noise_seed']}", f"s{config['seed']}", digest]
    return "-".join(parts)


# ---------------------------------------------------------------------------------------------
# Files.

def write_atomic(path, write, binary=False):
    """Write through `write(file)` into a temporary file beside `path`, then rename over it:
    a reader, or a run killed mid-write, never sees half a file."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path), suffix=".tmp")
    try:
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", newline="", encoding="utf-8")) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_csv(path, rows, columns=None):
    """Rows (dicts) as a CSV, atomically; columns default to every key, in first-seen order."""
    columns = columns or list(dict.fromkeys(k for row in rows for k in row))

    def write(f):
        w = csv.DictWriter(f, columns, extrasaction="raise", lineterminator="\n")
        w.writeheader()
        w.writerows({k: format_value(row.get(k)) for k in columns} for row in rows)
    write_atomic(path, write)


def format_value(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(float(v))  # shortest exact form, also for numpy floats
    if isinstance(v, (list, tuple)):
        return " ".join(str(x) for x in v)
    return v


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@contextlib.contextmanager
def locked(path):
    """Exclusive lock on path + '.lock', so parallel runs (GPUs, SLURM tasks) can share a file."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class Busy(Exception):
    """The run's folder is locked by a live process (its pid is the message)."""


def lock_holder(folder):
    """The pid holding `folder`'s run lock, or None: nothing is created."""
    path = os.path.join(folder, ".lock")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return None
        except BlockingIOError:
            return f.read().strip() or "unknown"


@contextlib.contextmanager
def run_lock(folder):
    """Hold `folder`'s run lock while the run lives, or raise Busy(pid). The kernel releases it when
    its process ends, however it ends, so the lock of a killed run is simply taken over."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, ".lock"), "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise Busy(f.read().strip() or "unknown") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        yield


def remove_temporaries(folder, prefix=""):
    """Delete what a kill during write_atomic left in `folder` (.<prefix>*.tmp); the caller must hold
    the lock that keeps other writers out, or a live temporary could go."""
    for name in os.listdir(folder) if os.path.isdir(folder) else ():
        if name.startswith("." + prefix) and name.endswith(".tmp"):
            os.remove(os.path.join(folder, name))


def check_writable(folder, summary="summary.csv"):
    """ValueError naming the problem if results cannot be written into `folder`: it is a file, its
    nearest existing folder is read-only, or `summary` there is a folder. Creates nothing."""
    path = os.path.abspath(folder)
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"{folder!r} cannot hold results: {existing} is a file")
    try:  # a real write: access() says yes to root on read-only folders and mounts
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".writable-")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise ValueError(f"{folder!r} cannot hold results: {existing} is not writable ({e.strerror})") from None
    if os.path.isdir(os.path.join(path, summary)):
        raise ValueError(f"{folder!r} cannot hold results: {os.path.join(path, summary)} is a folder")


def finished_row(summary_path, name):
    """The summary row of run `name`, or None if it has not finished."""
    if not os.path.exists(summary_path):
        return None
    with locked(summary_path):
        return next((row for row in read_csv(summary_path) if row.get("run") == name), None)


def record_summary(summary_path, row):
    """Add the run's row to the shared summary, replacing an older row of the same run."""
    unknown = unclassified(row)
    if unknown:  # a programming error: classify the column in SCHEMA first
        raise ValueError(f"summary columns {unknown} are not in results.SCHEMA")
    with locked(summary_path):
        remove_temporaries(os.path.dirname(summary_path) or ".", os.path.basename(summary_path))
        rows = read_csv(summary_path) if os.path.exists(summary_path) else []
        rows = [r for r in rows if r.get("run") != row["run"]] + [row]
        write_csv(summary_path, rows)


def code_version():
    """The git commit of this code, '+dirty' when files it tracks have changed, or '' outside git."""
    def git(*args):
        return subprocess.run(["git", "-C", os.path.dirname(os.path.abspath(__file__)), *args], capture_output=True,
                              text=True, timeout=30)
    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return commit.stdout.strip() + ("+dirty" if dirty else "") if commit.returncode == 0 else ""


def versions(*packages):
    """Python's and each package's version; an imported package reports its own (torch's build tag)."""
    found = {"python": platform.python_version()}
    for name in packages:
        module = sys.modules.get(name)
        found[name] = module.__version__ if module else importlib.metadata.version(name)
    return found


# ---------------------------------------------------------------------------------------------
# Figures: matplotlib is imported on first use, so that tables-only runs never load it.

def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, stem):
    """A matplotlib figure as stem.png and stem.pdf, each written atomically."""
    for ext in ("png", "pdf"):
        write_atomic(f"{stem}.{ext}", lambda f: fig.savefig(f, format=ext, dpi=150, bbox_inches="tight"),
                     binary=True)
