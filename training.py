"""What train_mnist.py and train_cifar.py share: the training step, evaluation, and a run's lifecycle.

    Learner, train_epoch   what trains; the one loop: forward, loss, backward, optional clip, step, lr step
    evaluate               accuracy, loss, NLL and calibration error (an epoch's row: results.epoch_row)
    RunFolder              a run's name and lock, skip if finished, resume, checkpoints, provenance, summary row

Each batch is gathered from a per-epoch permutation of the uint8 data on the device, augmented and
normalised there; per step only the loss and predictions go into device buffers, read once per epoch.
"""
import contextlib
import io
import json
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass

import torch

import losses
import results
from data import derived_seed, normalise, random_crop_flip
from errors import Failure

AMP = {"fp16": torch.float16, "bf16": torch.bfloat16, None: None}  # --amp: the autocast dtype (None: float32)


def device_for(config):
    """The device of --device (default: cuda if available, else cpu), checked with what else needs torch to
    check, before any work: a Failure if it is not usable, or if --clip-mode per-example meets batch norm."""
    if config.clip_mode == "per-example":
        import per_example
        per_example.check(config)
    name = config.device
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


def fused(device, compiled=False):
    """The optimisers' `fused` flag: fused kernels on CUDA, where fp16's scaler skips an inf/NaN step on the
    device (the default kernels read that flag back each step: a host sync); not for a compiled model, whose
    gradients the fused kernels may refuse (pytorch/pytorch#126585), nor off CUDA (torch's default, None)."""
    return True if device.type == "cuda" and not compiled else None


@dataclass
class Learner:
    """What a run trains: the network, its loss, optimiser and schedule (stepped every iteration), and, from
    the run's config, how a batch goes through them: --amp (fp16 with a scaler), layout, compile, clipping."""
    net: torch.nn.Module
    criterion: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    config: object  # a config.Config

    def __post_init__(self):
        c = self.config
        # SGD's momentum buffers start at zero (with dampening 0 the same steps): fused SGD would create them
        # uninitialised on its first step, and leave them so where fp16's scaler skips that step (an overflow)
        for group in self.optimizer.param_groups:
            for p in group["params"] if group.get("momentum") else ():
                self.optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p)
        self.device = next(self.net.parameters()).device
        self.amp, self.channels_last, self.clip_norm = AMP[c.amp], c.channels_last, c.clip_norm
        self.per_example = c.clip_mode == "per-example"
        self.forward = torch.compile(self.net) if c.compile else self.net
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=c.amp == "fp16")

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None)

    def inputs(self, images, mean, std):
        """uint8 images as the network's normalised float input."""
        x = normalise(images, mean, std)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def train_epoch(learner, data, generator, *, batch_size, augment, epoch=1):
    """One pass over the training set in a fresh random order: the epoch's statistics, or a Failure naming
    the step of a non-finite loss."""
    learner.net.train()
    dev = data.train_y.device
    n, b = len(data.train_y), batch_size
    steps = math.ceil(n / b)
    perm = torch.randperm(n, device=dev, generator=generator)
    step_losses = torch.zeros(steps, device=dev)
    preds = torch.empty(n, dtype=torch.long, device=dev)
    norms = None
    if learner.per_example:
        from per_example import clipped_backward  # only for --clip-mode per-example
        norms = torch.zeros(n, device=dev)
    live, start = sys.stderr.isatty(), time.monotonic()  # a progress line on a terminal: host-side only
    optimizer, scaler = learner.optimizer, learner.scaler
    for i in range(steps):
        batch = slice(i * b, (i + 1) * b)
        idx = perm[batch]
        images = data.train_x[idx]
        if augment:
            images = random_crop_flip(images, generator)
        x, y = learner.inputs(images, data.mean, data.std), data.train_y[idx]
        optimizer.zero_grad(set_to_none=True)
        if norms is not None:
            logits, loss, norms[batch] = clipped_backward(learner, x, y)
        else:
            with learner.autocast():
                logits = learner.forward(x)
                loss = learner.criterion(logits, y)
            scaler.scale(loss).backward()
            if learner.clip_norm is not None:  # clip the true gradient: unscale first under fp16
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(learner.net.parameters(), learner.clip_norm)
        scaler.step(optimizer)
        scaler.update()
        learner.schedule.step()
        step_losses[i] = loss.detach()
        preds[batch] = logits.detach().argmax(1)
        if live and i % 50 == 49:
            rate = (i + 1) * b / (time.monotonic() - start)
            print(f"\r  step {i + 1}/{steps}  {rate:,.0f} img/s  ETA {(n - (i + 1) * b) / rate:.0f} s   ", end="",
                  file=sys.stderr, flush=True)
    if live:
        print("\r" + " " * 60 + "\r", end="", file=sys.stderr, flush=True)
    # the epoch's reads begin here, after its last step: no step waits for the device (test_cuda.py checks)
    stats = epoch_stats(preds, data.train_y[perm], data.train_clean[perm], norms, learner.clip_norm)
    bad = (~torch.isfinite(step_losses)).nonzero()  # the epoch's one host sync (with the statistics)
    if len(bad):
        raise Failure(f"non-finite training loss at epoch {epoch}, step {bad[0].item() + 1} of {steps} "
                      f"(global step {(epoch - 1) * steps + bad[0].item() + 1}); no result written, "
                      f"the last checkpoint is epoch {epoch - 1}", code=1)
    sizes = torch.full((steps,), float(b), device=dev)
    sizes[-1] = n - (steps - 1) * b  # the last batch may be smaller
    stats["loss_sum"] = (step_losses * sizes).sum().item()
    return stats


def epoch_stats(pred, y, clean, norms=None, clip_norm=None):
    """Counts over the epoch's predictions (and per-sample gradient norms), clean and corrupted apart."""
    corrupted, fits, right = y != clean, pred == y, pred == clean
    counts = [fits, right, corrupted, fits & corrupted, right & corrupted, ~corrupted]
    names = ["correct_noisy", "correct_clean", "corrupted", "memorised", "corrupted_clean", "clean_seen"]
    values = torch.stack(counts).sum(1).double()
    if norms is not None:
        clipped = norms > clip_norm
        names += ["clipped_clean", "clipped_corrupted", "norm_sum_clean", "norm_sum_corrupted"]
        values = torch.cat([values, torch.stack([(clipped & ~corrupted).sum(), (clipped & corrupted).sum(),
                                                 (norms * ~corrupted).sum(), (norms * corrupted).sum()]).double()])
    return dict(zip(names, values.tolist()))


@torch.no_grad()
def predict(learner, images, mean, std, batch=1000):
    """Logits (float32) of the network in eval mode, in batches."""
    learner.net.eval()
    out = []
    for i in range(0, len(images), batch):
        with learner.autocast():
            out.append(learner.forward(learner.inputs(images[i:i + batch], mean, std)).float())
    return torch.cat(out)


def expected_calibration_error(logits, labels, bins=15):
    """ECE with equal-width confidence bins: sum_b (n_b / n) |acc_b - conf_b|, from per-bin sums."""
    conf, pred = torch.softmax(logits.float(), 1).max(1)
    correct = (pred == labels).float()
    which = torch.clamp((conf * bins).ceil().long() - 1, 0, bins - 1)  # bin b holds (b/B, (b+1)/B]
    correct_sums = torch.bincount(which, weights=correct, minlength=bins)
    conf_sums = torch.bincount(which, weights=conf, minlength=bins)
    return ((correct_sums - conf_sums).abs().sum() / max(len(labels), 1)).item()


def evaluate(learner, images, labels, mean, std, *, clean=None):
    """Accuracy (%), loss, NLL and ECE on a labelled set; accuracy against clean labels if given.
    Accuracies come from integer counts (100 * 8899 / 10000 prints as 88.99, not 88.99000000000001)."""
    if len(labels) == 0:
        return {}
    logits = predict(learner, images, mean, std)
    pred = logits.argmax(1)
    out = dict(acc=100 * (pred == labels).sum().item() / len(labels), loss=learner.criterion(logits, labels).item(),
               nll=losses.ce(logits, labels).item(), ece=expected_calibration_error(logits, labels))
    if clean is not None:
        out["clean_acc"] = 100 * (pred == clean).sum().item() / len(clean)
    return out


# ---------------------------------------------------------------------------------------------
# A run's files: results/runs/<run name>/ (config.json, noise_transitions.csv, epochs.csv, checkpoint.pt)
# and its row in results/summary.csv. A finished run is not run again; an interrupted one continues
# from the checkpoint of its last epoch with every random state restored.

class RunFolder:
    """One run's lifecycle, around the script's epoch loop:

        run = RunFolder(config)          its name; `if run.finished(): return` (checks all it can first)
        with run.training(learner, data, generator):     the lock; resumes, or writes config.json
            for epoch in run.epochs():   the epochs left: each ends with run.end_epoch(row)
            run.finish()                 the summary row, the checkpoint removed
    """

    def __init__(self, config):
        self.config, self.name = config, results.run_name(config.settings())
        self.folder = os.path.join(config.out, "runs", self.name)
        self.checkpoint = os.path.join(self.folder, "checkpoint.pt")
        self.summary = os.path.join(config.out, "summary.csv")
        self.history, self.elapsed, self.left, self.saved = [], 0.0, True, 0  # saved: the checkpoint's epoch

    def finished(self):
        """Whether the run has finished (said in one line); before any work, a Failure if it cannot
        start: --out unwritable, the run in progress elsewhere, its summary unreadable, or --resume /
        --force not as its checkpoint asks."""
        try:
            results.check_writable(self.config.out)
        except ValueError as e:
            raise Failure(f"--out {e}")
        if pid := results.lock_holder(self.folder):  # checked before the data are loaded, and again under the lock
            raise Failure(f"run {self.name} is in progress (pid {pid})")
        try:  # a summary it cannot read whole it could not add to either: said before any work
            done = results.finished_row(self.summary, self.name)
        except results.BadFile as e:
            raise Failure(str(e))
        if done and not self.config.force:
            print(f"{self.name}: already finished (test accuracy {done.get('test_acc')}%); --force re-runs it")
            return True
        self.resuming()
        return False

    def resuming(self):
        """Whether to resume the interrupted run; a Failure if the flags say otherwise, or if --resume would start
        over beside an interrupted run of the same cell with other settings (another --lr), orphaning it."""
        config = self.config
        if os.path.exists(self.checkpoint) and not config.force:
            if not config.resume:
                raise Failure(f"{self.checkpoint} holds an interrupted run of this configuration: pass --resume to "
                              "continue it or --force to start over")
            return True
        if config.resume and not config.force:
            other = results.interrupted_sibling(os.path.dirname(self.folder), config.settings())
            if other:
                raise Failure(f"--resume: no interrupted run has these settings; the interrupted run {other[0]} "
                              f"differs in {other[1]}: give its settings to resume it, or --force to start this one")
        return False

    @contextlib.contextmanager
    def training(self, learner, data, generator):
        """Hold the run's lock while it trains; resume its checkpoint (every state of learner and
        generator), or start it: its sidecar files. Every failure becomes a one-line Failure."""
        self.learner, self.data, self.generator = learner, data, generator
        try:
            with results.run_lock(self.folder), results.sigterm_as_interrupt():
                results.remove_temporaries(self.folder)  # what a kill during an atomic write left
                if results.finished_row(self.summary, self.name) and not self.config.force:  # meanwhile
                    print(f"{self.name}: already finished by another process")
                    self.left = False
                elif self.resuming():
                    self.resume()
                    print(f"{self.name}: resuming after epoch {len(self.history)}")
                else:
                    self.write_run_files()
                if self.left:
                    print(f"{self.name}: {len(data.train_y)} training samples (realised flip rate "
                          f"{100 * data.record['flip_rate']:.2f}% of the full training set), {len(data.val_y)} "
                          f"validation, {len(data.test_y)} test; {self.config.epochs} epochs on {learner.device}")
                yield self
        except results.Busy as e:
            raise Failure(f"run {self.name} is in progress (pid {e})")
        except KeyboardInterrupt:
            raise Failure(f"{self.name}: interrupted; its last checkpoint is epoch {self.saved}: rerun with --resume",
                          code=130)
        except OSError as e:  # a full disk names no file: the results folder then says where
            raise Failure(f"{self.name}: cannot write its results in {self.config.out}: {e.strerror or e}"
                          + (f" ({e.filename})" if e.filename else ""), code=1)
        except results.BadFile as e:  # the summary went bad while it ran
            raise Failure(f"{self.name}: cannot add its row to the summary: {e}; its checkpoint is kept: rerun with "
                          "--resume once the file is repaired", code=1)

    def epochs(self):  # the epochs left to train, numbered from 1
        return range(len(self.history) + 1, self.config.epochs + 1) if self.left else range(0)

    def end_epoch(self, row):
        """Record an epoch: its row in epochs.csv and, every --checkpoint-every epochs and after the last, a
        checkpoint of every state, so that an interruption loses at most the epochs since."""
        learner, self.elapsed = self.learner, self.elapsed + row["epoch_seconds"]
        self.history.append(row)
        results.write_csv(os.path.join(self.folder, "epochs.csv"), self.history)
        print(results.epoch_line(row, self.config.epochs), flush=True)
        if row["epoch"] % self.config.checkpoint_every and row["epoch"] < self.config.epochs:
            return
        self.saved = row["epoch"]
        save_checkpoint(self.checkpoint, dict(
            model=learner.net.state_dict(), optimizer=learner.optimizer.state_dict(),
            scheduler=learner.schedule.state_dict(), scaler=learner.scaler.state_dict(),
            generator=self.generator.get_state(), torch_rng=torch.get_rng_state(), epoch=row["epoch"],
            history=self.history, elapsed=self.elapsed, data=self.data.fingerprint, threads=torch.get_num_threads()))

    def finish(self):
        """The summary row (always the final epoch's: no choice is made on test data), then clean up."""
        if not self.left:
            return
        final, data, device = self.history[-1], self.data, self.learner.device
        row = dict(run=self.name, **self.config.settings(), **{k: final[k] for k in final if k not in ("epoch", "lr")},
                   train_size=len(data.train_y), val_size=len(data.val_y), test_size=len(data.test_y),
                   flip_rate=data.record["flip_rate"], label_hash=data.record["label_hash"],
                   wall_seconds=self.elapsed, device=str(device), device_name=torch.cuda.get_device_name(device)
                   if device.type == "cuda" else platform.processor() or platform.machine(),
                   threads=torch.get_num_threads(), **results.versions("torch", "torchvision", "numpy"),
                   code=results.code_version(), finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        results.record_summary(self.summary, row)
        if self.config.save_model:
            save_checkpoint(os.path.join(self.folder, "model.pt"), self.learner.net.state_dict())
        os.remove(self.checkpoint)
        print(f"{self.name}: final test accuracy {final['test_acc']:.2f}% after {self.config.epochs} epochs "
              f"({self.elapsed:.0f} s); summary row in {self.summary}")

    def write_run_files(self):
        """The run's sidecars: command line, config and versions; the noise's transition counts."""
        data = self.data
        os.makedirs(self.folder, exist_ok=True)
        meta = dict(run=self.name, command=" ".join(shlex.quote(a) for a in sys.argv), config=self.config.settings(),
                    flip_rate=data.record["flip_rate"], label_hash=data.record["label_hash"],
                    **({"noise_file": data.record["file"]} if "file" in data.record else {}),  # human noise's file
                    threads=torch.get_num_threads(), versions=results.versions("torch", "torchvision", "numpy"),
                    code=results.code_version(),
                    started=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        results.write_atomic(os.path.join(self.folder, "config.json"), lambda f: json.dump(meta, f, indent=1))
        counts = data.record["transitions"]
        results.write_csv(os.path.join(self.folder, "noise_transitions.csv"),
                          [dict(clean=c, **{f"noisy_{j}": int(counts[c, j]) for j in range(len(counts))})
                           for c in range(len(counts))])

    def resume(self):
        """Restore every state of the interrupted run. Refuses, in one line, a checkpoint it cannot read, one
        made on other data, or on the CPU with another number of threads (float sums depend on it)."""
        path, learner = self.checkpoint, self.learner
        try:  # a checkpoint is untrusted input: tensors and plain values only (weights_only), on the CPU
            with results.open_regular(path) as f:  # a FIFO or a link to /dev/zero would never end
                saved = torch.load(f, map_location="cpu", weights_only=True)
            made_on = saved["data"]
        except Exception as e:  # a truncated or foreign file fails in many ways; each means unreadable
            why = "not a regular file" if isinstance(e, results.BadFile) else type(e).__name__
            raise Failure(f"{path} is not a readable checkpoint of this code ({why}): delete it, or pass --force to "
                          "start over")
        fingerprint = self.data.fingerprint
        if made_on != fingerprint:
            differ = ", ".join(k for k in sorted({*made_on, *fingerprint}) if made_on.get(k) != fingerprint.get(k))
            raise Failure(f"{path} was made on other data ({differ} differ): resume with the --data-dir it was made "
                          "with, or pass --force to start over")
        threads = saved.get("threads")  # None: made before checkpoints kept it
        if learner.device.type == "cpu" and threads not in (None, torch.get_num_threads()):
            raise Failure(f"{path} was made with {threads} CPU threads, this process has {torch.get_num_threads()}: "
                          f"resume it with OMP_NUM_THREADS={threads} (run_all.sh: the --cpu-workers it ran with), or "
                          "pass --force to start over")
        learner.net.load_state_dict(saved["model"])
        load_optimizer(learner.optimizer, saved["optimizer"])
        learner.schedule.load_state_dict(saved["scheduler"])
        learner.scaler.load_state_dict(saved["scaler"])
        torch.set_rng_state(saved["torch_rng"])
        self.history, self.elapsed, self.saved = saved["history"], saved["elapsed"], saved["epoch"]
        if len(saved["generator"]) == len(self.generator.get_state()):
            self.generator.set_state(saved["generator"])
        else:  # made on another kind of device (a CPU generator's state has 5,056 bytes, a CUDA one's 16)
            self.generator.manual_seed(derived_seed(self.config.seed, self.saved))
            path = os.path.join(self.folder, "config.json")  # the run's record says so
            meta = dict(json.loads(results.read_file(path, results.CONFIG_LIMIT)), reseeded_after_epoch=self.saved)
            results.write_atomic(path, lambda f: json.dump(meta, f, indent=1))
            print(f"{self.name}: its checkpoint's data-order generator is another device's: re-seeded from (seed "
                  f"{self.config.seed}, epoch {self.saved})")


def load_optimizer(optimizer, saved):
    """optimizer.load_state_dict, keeping this device's kernels (fused), not the checkpoint's device's."""
    flags = [group.get("fused") for group in optimizer.param_groups]
    optimizer.load_state_dict(saved)
    for group, flag in zip(optimizer.param_groups, flags):
        group["fused"] = flag
        for p in group["params"]:  # Adam's step count lives where the kernels read it: the device if fused
            state = optimizer.state.get(p, {})
            if torch.is_tensor(state.get("step")):
                state["step"] = state["step"].to(p.device if flag else "cpu", torch.float32)


def save_checkpoint(path, state):
    """torch.save into memory, then an atomic write: a full disk is the one-line OSError the run reports."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    results.write_atomic(path, lambda f: f.write(buffer.getbuffer()), binary=True)

