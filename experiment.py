"""One training run from start to finish: train_mnist.py and train_cifar.py call run().

    run      setup (data, model, optimiser), resume or start, fit (epochs, checkpoints), finish
             (the summary row); what the run writes is described in docs/csv-columns.md

A run is identified by its settings (results.run_name); a finished run is not run again, an
interrupted one continues from the checkpoint of its last epoch with every random state restored.
"""
import contextlib
import io
import json
import math
import os
import platform
import shlex
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

import losses
import models
import noise
import results
from cli import Failure
from data import DataError, DataMissing, load_with_labels, prepare
from training import AMP, Model, Optimiser, epoch_line, epoch_row, evaluate, fused, train_epoch


def criterion_for(config):
    """The run's loss, built from its settings: the one place a training loss is made. Its per-call
    target check (a host sync) is off: data.load_dataset checks every label once."""
    return losses.make_loss(config["loss"], check_targets=False, **{k: config.get(k) for k in losses.PARAMS})


def run(args, config, make_optimizer, lr_factor, augment):
    """Train `config` (from cli.parse; args adds the runtime flags) and write its results.

    make_optimizer(params, fused) and lr_factor(steps_per_epoch) -> (step -> factor) hold the script's
    report settings; augment switches on random crop + flip. Returns the exit status; every failure
    raises a cli.Failure (one line): 2 for bad input, 3 for unavailable data, 1 for the rest, 130
    interrupted.
    """
    criterion = criterion_for(config)
    check_per_example(config)
    device = check_device(args.device)
    spec = noise.Spec(config["noise"], config["rho"], config["noise_seed"], config.get("noise_key"),
                      getattr(args, "noise_file", None), features=config["noise_features"])
    job = Run(results.run_name(config), config, args.out, device, data_dir=args.data_dir, download=args.download,
              label_noise=spec, compile=args.compile, save_model=args.save_model, augment=augment,
              make_optimizer=make_optimizer, lr_factor=lr_factor)
    if args.prepare_data:
        return describe_data(job)
    try:
        results.check_writable(args.out)
    except ValueError as e:
        raise Failure(f"--out {e}")
    if results.lock_holder(job.folder):  # checked before the data are loaded, and again under the lock
        raise Failure(f"run {job.name} is in progress (pid {results.lock_holder(job.folder)})")
    try:  # a summary it cannot read whole it could not add to either: said before any work
        if already_finished(job, args.force):
            return 0
    except results.BadFile as e:
        raise Failure(str(e))
    check_resume(job, args.resume, args.force)

    data, state = setup(job, criterion)
    history = []
    try:
        with results.run_lock(job.folder), sigterm_as_interrupt():
            if already_finished(job, args.force):  # by another process, meanwhile
                return 0
            resuming = check_resume(job, args.resume, args.force)
            results.remove_temporaries(job.folder)  # what a kill during an atomic write left
            if resuming:
                history, elapsed = resume(job, state, data.fingerprint)
                print(f"{job.name}: resuming after epoch {len(history)}")
            else:
                elapsed = 0.0
                write_run_files(job, data)
            print(f"{job.name}: {len(data.train_y)} training samples (realised flip rate "
                  f"{100 * data.record['flip_rate']:.2f}% of the full training set), {len(data.val_y)} validation, "
                  f"{len(data.test_y)} test; {config['epochs']} epochs on {device}")
            elapsed = fit(job, state, data, history, elapsed)
            finish(job, state.model, data, history, elapsed)
    except results.Busy as e:
        raise Failure(f"run {job.name} is in progress (pid {e})")
    except KeyboardInterrupt:
        raise Failure(f"{job.name}: interrupted; its last checkpoint is epoch {len(history)}: rerun with --resume",
                      code=130)
    except OSError as e:  # a full disk names no file: the results folder then says where
        raise Failure(f"{job.name}: cannot write its results in {args.out}: {e.strerror or e}"
                      + (f" ({e.filename})" if e.filename else ""), code=1)
    except results.BadFile as e:  # the summary went bad while it ran
        raise Failure(f"{job.name}: cannot add its row to the summary: {e}; its checkpoint is kept: rerun with "
                      "--resume once the file is repaired", code=1)
    return 0


@dataclass
class Run:
    """One run's resolved configuration, passed whole: its name (results.run_name of its settings), its
    settings (config: cli.parse's, what names the run), where its files go, and the runtime settings
    that never change its numbers: device, data source, label noise (noise.Spec, built from config),
    and the script's training recipe (augment; make_optimizer and lr_factor: see run)."""
    name: str
    config: dict
    out: str
    device: torch.device
    data_dir: str = "data"
    download: bool = False
    label_noise: noise.Spec = None
    compile: bool = False
    save_model: bool = False
    augment: bool = False
    make_optimizer: Callable = None
    lr_factor: Callable = None

    @property
    def folder(self):
        return os.path.join(self.out, "runs", self.name)

    @property
    def checkpoint(self):
        return os.path.join(self.folder, "checkpoint.pt")

    @property
    def summary(self):
        return os.path.join(self.out, "summary.csv")


def check_per_example(config):
    if config["clip_mode"] == "per-example":
        with torch.device("meta"):  # the architecture only: no memory, no initialisation cost
            batch_norm = models.has_batch_norm(models.make_model(config["model"], 10, 3))
        if batch_norm:
            raise Failure(f"--clip-mode per-example is not allowed with {config['model']}: it has batch norm, which "
                          "couples the samples of a batch, so per-sample gradients are not defined; use --clip-mode "
                          "global or a model without batch norm (lenet)")


def check_device(name):
    """The device of --device (default: cuda if available, else cpu); one line if it is not usable."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    usable = {"cpu": lambda: True, "mps": torch.backends.mps.is_available,
              "cuda": lambda: torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()}
    if device is None or device.type not in usable:
        raise Failure(f"--device {name!r} is not allowed: use cpu, cuda, cuda:N or mps")
    if not usable[device.type]():
        raise Failure(f"--device {name!r} is not allowed: this machine has {torch.cuda.device_count()} visible CUDA "
                      f"device(s){'' if device.type == 'cuda' else ' and no MPS'}; use cpu")
    return device


def already_finished(job, force):
    done = results.finished_row(job.summary, job.name)
    if done and not force:
        print(f"{job.name}: already finished (test accuracy {done.get('test_acc')}%); --force re-runs it")
    return bool(done) and not force


def check_resume(job, resume_asked, force):
    """Whether to resume the interrupted run in job.folder; a Failure (bad input) if the flags say
    otherwise, or if --resume would silently start over beside an interrupted run of the same cell
    with other settings (say another --lr), leaving it orphaned."""
    if os.path.exists(job.checkpoint) and not force:
        if not resume_asked:
            raise Failure(f"{job.checkpoint} holds an interrupted run of this configuration: pass --resume to "
                          "continue it or --force to start over")
        return True
    if resume_asked and not force:
        other = interrupted_sibling(os.path.dirname(job.folder), job.config)
        if other:
            raise Failure(f"--resume: no interrupted run has these settings; the interrupted run {other[0]} differs "
                          f"in {other[1]}: give its settings to resume it, or --force to start this one")
    return False


CONFIG_LIMIT = 1 << 20  # a run's config.json is about 2 kB


def interrupted_sibling(runs_dir, config):
    """(name, differences) of an interrupted run of the same grid cell with other settings, or None."""
    cell = [k for k in results.CELL if k in config]
    for name in sorted(os.listdir(runs_dir)) if os.path.isdir(runs_dir) else ():
        folder = os.path.join(runs_dir, name)
        try:  # another run's file: bounded, a regular file (read_file), well-formed, or passed over
            theirs = json.loads(results.read_file(os.path.join(folder, "config.json"), CONFIG_LIMIT))["config"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if os.path.exists(os.path.join(folder, "checkpoint.pt")) and all(theirs.get(k) == config[k] for k in cell):
            keys = sorted(set(theirs) | set(config), key=str)
            return name, ", ".join(f"{k} ({theirs.get(k)} there, {config.get(k)} here)" for k in keys
                                   if theirs.get(k) != config.get(k))
    return None


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM (what run_all.sh, timeout and SLURM send) stops the run as Ctrl-C does: cleanly."""
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def describe_data(job):
    """--prepare-data: load (downloading if needed) and describe the dataset, and check a human-noise
    label file against it (run_all.sh checks each dataset this way before any cell runs)."""
    dataset, data_dir, spec = job.config["dataset"], job.data_dir, job.label_noise
    try:
        (train_x, _, test_x, _), _ = load_with_labels(dataset, data_dir, job.download, spec)
    except DataError as e:
        raise Failure(str(e), code=3 if isinstance(e, DataMissing) else 2)
    print(f"{dataset}: {len(train_x)} training and {len(test_x)} test images of shape "
          f"{tuple(train_x.shape[1:])} in {data_dir}" + (f"; labels {spec.key} of {spec.file}" if spec.kind == "human"
                                                           else ""))
    return 0


def setup(job, criterion):
    """(data, state): the run's data (label noise: job.label_noise) on the device, its model (seeded by the
    trial seed), optimiser and generator."""
    config, device, spec, compile_model = job.config, job.device, job.label_noise, job.compile
    torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its fastest kernels
    try:
        data = prepare(job)
    except DataError as e:
        raise Failure(str(e), code=3 if isinstance(e, DataMissing) else 2)
    parsed = data.record.get("file", {}).get("sha256")  # of the very bytes whose labels it trains on
    if config["noise"] == "human" and parsed != config["noise_file_sha256"]:  # replaced since cli.parse named it
        raise Failure(f"{spec.file} changed while the run started: the run is named for SHA-256 "
                      f"{config['noise_file_sha256']}, its labels are now {parsed}: start it again")
    if config["noise"] == "symmetric" and config["rho"] > (data.classes - 1) / data.classes:
        warnings.warn(f"--rho {config['rho']} exceeds (K-1)/K = {(data.classes - 1) / data.classes:.3f}: "
                      "noisy labels are then anti-correlated with the true ones")
    torch.manual_seed(config["seed"])
    net = models.make_model(config["model"], data.classes, data.channels, config.get("init")).to(device)
    if config["channels_last"]:
        net = net.to(memory_format=torch.channels_last)
    model = Model(net, criterion, torch.compile(net) if compile_model else net, AMP[config["amp"]],
                  config["channels_last"])
    optimizer = job.make_optimizer(net.parameters(), fused=fused(device, compile_model))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, job.lr_factor(math.ceil(len(data.train_y) / config["batch_size"])))
    optimiser = Optimiser(optimizer, scheduler, torch.amp.GradScaler(device.type, enabled=config["amp"] == "fp16"),
                          config["clip_norm"], per_example=config["clip_mode"] == "per-example")
    return data, State(model, optimiser, torch.Generator(device).manual_seed(config["seed"]))


@dataclass
class State:
    """What a run trains, and every state an interrupted run restores: the model, its optimiser, and
    the generator of the data order and augmentation."""
    model: Model
    optimiser: Optimiser
    generator: torch.Generator


def resume(job, state, fingerprint):
    """Restore every state of an interrupted run; returns its history and elapsed seconds. Refuses,
    in one line, a checkpoint it cannot read, one made on other data, or on the CPU one made with
    another number of threads (the order of a float sum depends on it: the same run with 1 and 2
    threads ends at other numbers, so a resume would make a run that is neither)."""
    checkpoint_path, model, optimiser = job.checkpoint, state.model, state.optimiser
    try:  # a checkpoint is untrusted input: tensors and plain values only (weights_only)
        # on the CPU: RNG states must stay CPU tensors; load_state_dict moves the rest to the device
        with results.open_regular(checkpoint_path) as f:  # a FIFO or a link to /dev/zero would never end
            saved = torch.load(f, map_location="cpu", weights_only=True)
        made_on = saved["data"]
    except Exception as e:  # a truncated or foreign file fails in many ways; each means unreadable
        why = "not a regular file" if isinstance(e, results.BadFile) else type(e).__name__
        raise Failure(f"{checkpoint_path} is not a readable checkpoint of this code ({why}): delete it, "
                      "or pass --force to start over")
    if made_on != fingerprint:
        differ = ", ".join(k for k in sorted(set(made_on) | set(fingerprint)) if made_on.get(k) != fingerprint.get(k))
        raise Failure(f"{checkpoint_path} was made on other data ({differ} differ): resume with the --data-dir it "
                      "was made with, or pass --force to start over")
    threads = saved.get("threads")  # None: made before checkpoints kept it
    if job.device.type == "cpu" and threads not in (None, torch.get_num_threads()):
        raise Failure(f"{checkpoint_path} was made with {threads} CPU threads, this process has "
                      f"{torch.get_num_threads()}: resume it with OMP_NUM_THREADS={threads} (run_all.sh: the "
                      "--cpu-workers it ran with), or pass --force to start over")
    model.net.load_state_dict(saved["model"])
    load_optimizer(optimiser.optimizer, saved["optimizer"])
    optimiser.scheduler.load_state_dict(saved["scheduler"])
    optimiser.scaler.load_state_dict(saved["scaler"])
    state.generator.set_state(saved["generator"])
    torch.set_rng_state(saved["torch_rng"])
    return saved["history"], saved["elapsed"]


def load_optimizer(optimizer, saved):
    """optimizer.load_state_dict, keeping this device's kernels (training.fused): torch would take the
    checkpoint's `fused` flag too, and a run may resume on another device."""
    flags = [group.get("fused") for group in optimizer.param_groups]
    optimizer.load_state_dict(saved)
    for group, flag in zip(optimizer.param_groups, flags):
        group["fused"] = flag
        for p in group["params"]:  # Adam's step count lives where the kernels read it: the device if fused
            state = optimizer.state.get(p, {})
            if torch.is_tensor(state.get("step")):
                state["step"] = state["step"].to(p.device if flag else "cpu", torch.float32)


def fit(job, state, data, history, elapsed):
    """Train the remaining epochs; after each, evaluate, checkpoint and rewrite epochs.csv."""
    config, model, optimiser, generator = job.config, state.model, state.optimiser, state.generator
    steps = math.ceil(len(data.train_y) / config["batch_size"])
    for epoch in range(len(history) + 1, config["epochs"] + 1):
        t0 = time.perf_counter()
        lr = optimiser.optimizer.param_groups[0]["lr"]
        step_losses, stats = train_epoch(model, optimiser, data, generator, batch_size=config["batch_size"],
                                         augment=job.augment)
        bad = (~torch.isfinite(step_losses)).nonzero()  # the epoch's one host sync (with the stats)
        if len(bad):
            raise Failure(f"non-finite training loss at epoch {epoch}, step {bad[0].item() + 1} of {steps} "
                          f"(global step {(epoch - 1) * steps + bad[0].item() + 1}); no result written, "
                          f"the last checkpoint is epoch {epoch - 1}", code=1)
        train_seconds = time.perf_counter() - t0
        test = evaluate(model, data.test_x, data.test_y, data.mean, data.std)
        val = evaluate(model, data.val_x, data.val_y, data.mean, data.std, clean=data.val_clean)
        seconds = time.perf_counter() - t0
        elapsed += seconds
        history.append(epoch_row(stats, test, val, epoch=epoch, steps=steps, lr=lr, train_seconds=train_seconds,
                                 seconds=seconds))
        save_checkpoint(job.checkpoint, dict(
            model=model.net.state_dict(), optimizer=optimiser.optimizer.state_dict(),
            scheduler=optimiser.scheduler.state_dict(), scaler=optimiser.scaler.state_dict(),
            generator=generator.get_state(),
            torch_rng=torch.get_rng_state(), epoch=epoch, history=history, elapsed=elapsed, data=data.fingerprint,
            threads=torch.get_num_threads()))
        results.write_csv(os.path.join(job.folder, "epochs.csv"), history)
        print(epoch_line(history[-1], config["epochs"]), flush=True)
    return elapsed


def finish(job, model, data, history, elapsed):
    """The summary row (always the final epoch's: no choice is made on test data), then clean up."""
    final, device = history[-1], job.device
    row = dict(run=job.name, **job.config, **{k: final[k] for k in final if k not in ("epoch", "lr")},
               train_size=len(data.train_y), val_size=len(data.val_y), test_size=len(data.test_y),
               flip_rate=data.record["flip_rate"], label_hash=data.record["label_hash"], wall_seconds=elapsed,
               device=str(device), device_name=device_name(device), threads=torch.get_num_threads(), **versions(),
               code=results.code_version(),
               finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    results.record_summary(job.summary, row)
    if job.save_model:
        save_checkpoint(os.path.join(job.folder, "model.pt"), model.net.state_dict())
    os.remove(job.checkpoint)
    print(f"{job.name}: final test accuracy {final['test_acc']:.2f}% after {job.config['epochs']} epochs "
          f"({elapsed:.0f} s); summary row in {job.summary}")


def save_checkpoint(path, state):
    """torch.save into memory first, then write: on a full disk torch.save into a file raises a
    RuntimeError of many lines, a write the one-line OSError the run reports."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    results.write_atomic(path, lambda f: f.write(buffer.getbuffer()), binary=True)


def versions():
    return results.versions("torch", "torchvision", "numpy")


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def write_run_files(job, data):
    """The run's sidecars: command line, config and versions; the noise's transition counts."""
    os.makedirs(job.folder, exist_ok=True)
    meta = dict(run=job.name, command=" ".join(shlex.quote(a) for a in sys.argv), config=job.config,
                flip_rate=data.record["flip_rate"], label_hash=data.record["label_hash"],
                **({"noise_file": data.record["file"]} if "file" in data.record else {}),  # human noise's file
                threads=torch.get_num_threads(), versions=versions(), code=results.code_version(),
                started=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    results.write_atomic(os.path.join(job.folder, "config.json"), lambda f: json.dump(meta, f, indent=1))
    counts = data.record["transitions"]
    results.write_csv(os.path.join(job.folder, "noise_transitions.csv"),
                      [dict(clean=c, **{f"noisy_{j}": int(counts[c, j]) for j in range(len(counts))})
                       for c in range(len(counts))])
