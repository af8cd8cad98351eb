"""Result files, standard library only: every script can import this without torch.

    SCHEMA, epoch_row  which summary column is a setting, a metric or provenance; an epoch's row
    run_name        a run's folder name: readable settings plus a hash of all of them
    write_atomic, write_csv   write a file so that a reader, or a kill, never sees half of it
    read_csv        a CSV as this code wrote it or as a spreadsheet saved it, bad rows named (BadFile)
    run_lock, check_writable, record_summary, finished_row   one process per run; the summary file
"""
import contextlib
import csv
import fcntl
import hashlib
import importlib.metadata
import io
import json
import os
import platform
import re
import signal
import stat
import subprocess
import sys
import tempfile

import catalog

# ---------------------------------------------------------------------------------------------
# The schema of result rows. A summary row is run + settings + the final epoch's metrics +
# provenance, and every one of its columns is exactly one of:
#   setting     what was run: runs are pooled (as trials of one table cell) only when every setting
#               but the seed agrees; the loss settings name the table row, rho its column
#   metric      what was measured
#   provenance  where, when and on what it ran: recorded, never compared
LOSS_SETTINGS = ("loss", *catalog.PARAMS, "clip_norm", "clip_mode")
SETTINGS = LOSS_SETTINGS + (
    "dataset", "model", "rho", "noise", "noise_features", "noise_key", "noise_file_sha256", "noise_seed", "seed", "val_split", "epochs", "batch_size", "lr",
    "weight_decay", "limit_train", "limit_test", "amp", "channels_last",
    "init", "lr_decay", "lr_decay_steps",         # train_mnist.py
    "momentum", "milestones", "lr_gamma")         # train_cifar.py
METRICS = ("train_loss", "train_acc", "train_clean_acc", "memorised", "corrupted_clean_acc", "test_loss",
           "test_nll", "test_ece", "test_acc", "val_acc", "val_clean_acc", "clipped_clean", "clipped_corrupted",
           "grad_norm_clean", "grad_norm_corrupted")
PROVENANCE = ("run", "step", "epoch_seconds", "images_per_second", "train_size", "val_size", "test_size",
              "flip_rate", "label_hash", "wall_seconds", "device", "device_name", "threads", "python", "torch",
              "torchvision", "numpy", "code", "finished")
# The settings that make a cell of the grid: two runs that agree on these and differ in others are
# the same cell run with changed settings (say --lr), which --resume must not mix up.
CELL = LOSS_SETTINGS + ("dataset", "model", "rho", "noise", "noise_key", "noise_seed", "seed")
SCHEMA = {**{c: "setting" for c in SETTINGS}, **{c: "metric" for c in METRICS},
          **{c: "provenance" for c in PROVENANCE}}
# An epochs.csv row: the epoch, its steps so far and learning rate, its metrics and its speed.
EPOCH_COLUMNS = ("epoch", "step", "lr", *METRICS, "epoch_seconds", "images_per_second")


def whole_number(text):
    """int(text) for ASCII digits only, else None: str.isdigit() also says yes to '²', which int() rejects,
    and to '٣', which it reads as 3."""
    return int(text) if isinstance(text, str) and re.fullmatch("[0-9]+", text) else None


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
    parts += [f"{k}{config[k]:g}" for k in catalog.PARAMS if config.get(k) is not None]
    if config["clip_norm"] is not None:
        parts.append(f"clip{config['clip_norm']:g}" + ("pe" if config["clip_mode"] == "per-example" else ""))
    noise = config["noise_key"] if config["noise"] == "human" else f"{config['noise'][:3]}{config['rho']:g}"
    parts += [noise, f"ns{config['noise_seed']}", f"s{config['seed']}", digest]
    return "-".join(parts)


def epoch_row(stats, test, val, *, epoch, steps, lr, train_seconds, seconds):
    """The epoch's CSV row (EPOCH_COLUMNS); shares in %, clipping statistics where per-sample norms exist."""
    corrupted, clean_seen = stats["corrupted"], stats["clean_seen"]
    seen = corrupted + clean_seen
    share = lambda a, b: 100 * a / b if b else None  # noqa: E731
    mean = lambda a, b: a / b if b else None  # noqa: E731
    clean_norms, corrupted_norms = (clean_seen, corrupted) if "norm_sum_clean" in stats else (0, 0)
    return dict(
        epoch=epoch, step=epoch * steps, lr=lr, train_loss=stats["loss_sum"] / seen,
        train_acc=share(stats["correct_noisy"], seen), train_clean_acc=share(stats["correct_clean"], seen),
        memorised=share(stats["memorised"], corrupted), corrupted_clean_acc=share(stats["corrupted_clean"], corrupted),
        test_loss=test["loss"], test_nll=test["nll"], test_ece=test["ece"], test_acc=test["acc"],
        val_acc=val.get("acc"), val_clean_acc=val.get("clean_acc"),
        clipped_clean=share(stats.get("clipped_clean"), clean_norms),
        clipped_corrupted=share(stats.get("clipped_corrupted"), corrupted_norms),
        grad_norm_clean=mean(stats.get("norm_sum_clean"), clean_norms),
        grad_norm_corrupted=mean(stats.get("norm_sum_corrupted"), corrupted_norms),
        epoch_seconds=seconds, images_per_second=seen / train_seconds)


def epoch_line(row, epochs):
    pct = lambda v: "-" if v is None else f"{v:.1f}%"  # noqa: E731
    val = f" val {pct(row['val_acc'])}" if row["val_acc"] is not None else ""
    return (f"epoch {row['epoch']}/{epochs} lr {row['lr']:.2e} loss {row['train_loss']:.4f} "
            f"train {pct(row['train_acc'])} clean {pct(row['train_clean_acc'])} "
            f"memorised {pct(row['memorised'])}{val} test {pct(row['test_acc'])} "
            f"({row['epoch_seconds']:.1f} s, {row['images_per_second']:,.0f} img/s)")


def write_atomic(path, write, binary=False):
    """Write through `write(file)` into a temporary file, renamed over `path`: no one sees half a file."""
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


class BadFile(ValueError):
    """A file from outside that cannot be used as it is: the message names it (and the line)."""


# What is read whole into memory from a file that comes from outside is bounded. A summary row is
# about 1.5 kB: 64 MiB holds some 40,000 runs (the report's grid has 230); an epochs.csv row 0.5 kB.
CSV_LIMIT = 64 << 20


def open_regular(path):
    """The regular file `path` (links followed) open for reading in binary: BadFile for a folder, a
    device or a FIFO, which could block or never end (/dev/zero); OSError if it cannot be opened."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # opening a FIFO must not wait for a writer
    f = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        f.close()
        raise BadFile(f"{path}: not a regular file")
    return f


def read_file(path, limit):
    """The bytes of the regular file `path` (open_regular); BadFile for more than `limit` bytes."""
    with open_regular(path) as f:
        content = f.read(limit + 1)
    if len(content) > limit:
        raise BadFile(f"{path}: more than {limit >> 20} MiB, more than such a file can be")
    return content


# In a field: a byte that is not UTF-8 (decoded as U+DC80-U+DCFF) or a control character other than
# tab and line ends, as a crash (NUL blocks) or a binary file leaves them.
NOT_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\udc80-\udcff]")


def read_csv(path, required=(), check=None, bad=None):
    """The rows (dicts) of a CSV as this code writes it or as a spreadsheet saved it since (a byte-order
    mark, CRLF). A row that is not one text value per column, has an empty `required` value, or that
    check(row) rejects (ValueError) is bad: bad(line, why) is called and the row left out; without `bad`,
    the first raises BadFile, as does a file without the `required` columns or one read_file refuses. A
    column named twice (as an old writer left it) is one column where the two agree or one is empty."""
    def problem(line, why):
        if bad is None:
            raise BadFile(f"{path} line {line}: {why}")
        bad(line, why)
    text = read_file(path, CSV_LIMIT).decode("utf-8-sig", errors="surrogateescape")  # a bad byte: a bad row
    csv.field_size_limit(max(csv.field_size_limit(), CSV_LIMIT))  # no field is longer than its file
    reader, header, rows = csv.reader(io.StringIO(text, newline="")), None, []
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return rows
        except csv.Error as e:  # the reader starts afresh on the next line
            problem(reader.line_num, str(e))
            continue
        if not any(fields):
            continue  # a blank line, or one of empty fields (",,,") that a spreadsheet leaves for a cleared row
        if header is None:
            header, missing = fields, [c for c in required if c not in fields]
            if missing or NOT_TEXT.search("".join(fields)):
                raise BadFile(f"{path}: " + (f"no column {', '.join(missing)}" if missing else "its header is not text"))
            continue
        try:
            rows.append(csv_row(header, fields, required, check))
        except ValueError as e:
            problem(reader.line_num, str(e))


def csv_row(header, fields, required, check):
    """The row of `fields` under `header`, or ValueError saying why it is not one (read_csv)."""
    if len(fields) != len(header):
        raise ValueError(f"{len(fields)} fields, the header has {len(header)}")
    odd = NOT_TEXT.search("".join(fields))
    if odd:
        raise ValueError("not UTF-8" if odd.group() >= "\udc80" else "a NUL byte" if odd.group() == "\0" else
                         f"a control character (U+{ord(odd.group()):04X})")
    row = {}
    for name, value in zip(header, fields):
        if value and row.get(name) and row[name] != value:
            raise ValueError(f"{name} is {row[name]!r} and {value!r}")
        row[name] = value or row.get(name, "")
    empty = [c for c in required if not row[c]]
    if empty:
        raise ValueError(f"no {', '.join(empty)}")
    if check:
        check(row)
    return row


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


CONFIG_LIMIT = 1 << 20  # a run's config.json is about 2 kB


def interrupted_sibling(runs_dir, settings):
    """(name, differences) of an interrupted run of the same grid cell with other settings, or None."""
    cell = [k for k in CELL if k in settings]
    for name in sorted(os.listdir(runs_dir)) if os.path.isdir(runs_dir) else ():
        folder = os.path.join(runs_dir, name)
        try:  # another run's file: bounded, a regular file (read_file), well-formed, or passed over
            theirs = json.loads(read_file(os.path.join(folder, "config.json"), CONFIG_LIMIT))["config"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if os.path.exists(os.path.join(folder, "checkpoint.pt")) and all(theirs.get(k) == settings[k] for k in cell):
            keys = sorted(set(theirs) | set(settings), key=str)
            return name, ", ".join(f"{k} ({theirs.get(k)} there, {settings.get(k)} here)" for k in keys
                                   if theirs.get(k) != settings.get(k))
    return None


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM (what run_all.sh, timeout and SLURM send) stops the run as Ctrl-C does: cleanly."""
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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


def summary_rows(summary_path):
    """Every row of a summary file that runs add to (none if there is none yet). Strict, because the
    file is rewritten whole when a run finishes: a bad row (BadFile) stops the writer, never vanishes."""
    return read_csv(summary_path, ("run",)) if os.path.exists(summary_path) else []


def finished_row(summary_path, name):
    """The summary row of run `name`, or None if it has not finished; BadFile if the file is bad."""
    if not os.path.exists(summary_path):
        return None
    with locked(summary_path):
        return next((row for row in summary_rows(summary_path) if row["run"] == name), None)


def record_summary(summary_path, row):
    """Add the run's row to the shared summary, replacing an older row of the same run."""
    unknown = unclassified(row)
    if unknown:  # a programming error: classify the column in SCHEMA first
        raise ValueError(f"summary columns {unknown} are not in results.SCHEMA")
    with locked(summary_path):
        remove_temporaries(os.path.dirname(summary_path) or ".", os.path.basename(summary_path))
        rows = [r for r in summary_rows(summary_path) if r["run"] != row["run"]] + [row]
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


def pyplot():  # matplotlib, imported on first use: tables-only runs never load it
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, stem):
    """A matplotlib figure as stem.png and stem.pdf, each written atomically."""
    for ext in ("png", "pdf"):
        write_atomic(f"{stem}.{ext}", lambda f: fig.savefig(f, format=ext, dpi=150, bbox_inches="tight"),
                     binary=True)
