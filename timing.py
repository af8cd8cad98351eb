"""How long training takes, for bench.py: a Learner as the scripts build one (setup), a timer that waits for
the device, and --grid-estimate: what the report's grids would take on this device (docs/speed.md)."""
import contextlib
import dataclasses
import io
import json
import math
import multiprocessing
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import time

import torch

import catalog
import grid
import losses
import models
import results
import training
from config import compile_available, parse
from data import in_memory


def timed(fn, device):
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda device: None
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def random_images(n, channels, size, classes):
    g = torch.Generator().manual_seed(0)
    return (torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g),
            torch.randint(0, classes, (n,), generator=g))


def setup(model_name, classes, device, folder=None, *, batch_size=32, **flags):
    """A Learner as the scripts build a run's from the settings of catalog.BENCH's dataset and `flags` (amp="fp16",
    ...), with cross entropy unchecked per step, a constant learning rate, results into `folder`."""
    lenet = model_name == "lenet"
    argv = ["--dataset", catalog.BENCH["lenet" if lenet else "resnet50"], "--epochs", "1", "--batch-size",
            str(batch_size), "--force", "--out", folder or ".", *([] if lenet else ["--model", model_name])]
    for flag, value in flags.items():
        argv += [f"--{flag.replace('_', '-')}"] + ([] if value is True else [str(value)]) if value else []
    config = parse("train_mnist.py" if lenet else "train_cifar.py", argv)
    torch.manual_seed(0)
    layout = torch.channels_last if config.channels_last else torch.preserve_format
    net = models.make_model(model_name, classes, 1 if lenet else 3).to(device, memory_format=layout)
    kernels = training.fused(device, config.compile)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=kernels) \
        if lenet else torch.optim.SGD(net.parameters(), lr=config.lr, momentum=config.momentum, nesterov=True,
                                      weight_decay=config.weight_decay, fused=kernels)
    criterion = losses.make_loss("ce", check_targets=False)
    return training.Learner(net, criterion, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda n: 1.0),
                            config)


def head(data, n):
    return dataclasses.replace(data, train_x=data.train_x[:n], train_y=data.train_y[:n],
                               train_clean=data.train_clean[:n])


TRAIN = {net: catalog.DATASETS[catalog.BENCH[net]]["sizes"][0] for net in ("lenet", "resnet50")}
TEST = 10000  # the test set of each


def fit_seconds(learner, data, *, augment):
    """(wall, training) seconds of one epoch as the scripts' loop does it: train, evaluate, checkpoint, epochs.csv."""
    run, generator = training.RunFolder(learner.config), torch.Generator(learner.device).manual_seed(0)
    batch_size = learner.config.batch_size

    def epoch():
        with run.training(learner, data, generator):
            t0 = time.perf_counter()
            stats = training.train_epoch(learner, data, generator, batch_size=batch_size, augment=augment)
            train_seconds = time.perf_counter() - t0
            test = training.evaluate(learner, data.test_x, data.test_y, data.mean, data.std)
            val = training.evaluate(learner, data.val_x, data.val_y, data.mean, data.std, clean=data.val_clean)
            run.end_epoch(results.epoch_row(stats, test, val, epoch=1, steps=math.ceil(len(data.train_y) / batch_size),
                                             lr=learner.optimizer.param_groups[0]["lr"], train_seconds=train_seconds,
                                             seconds=time.perf_counter() - t0))
    with contextlib.redirect_stdout(io.StringIO()):  # the run's lines
        wall = timed(epoch, learner.device)
    return wall, len(data.train_y) / run.history[0]["images_per_second"]


def checkpoint_seconds(folder):
    """Seconds to write the checkpoint an epoch of the run in `folder` wrote (its size, with fsync), again."""
    (path,) = [os.path.join(d, "checkpoint.pt") for d, _, files in os.walk(folder) if "checkpoint.pt" in files]
    state = torch.load(path, weights_only=True)
    start = time.perf_counter()
    training.save_checkpoint(path, state)
    return time.perf_counter() - start


def measure(model_name, device, n, folder, *, batch_size, warmup, test=TEST, ready=None, **options):
    """fit_seconds of an epoch of `n` random images, after an untimed one of `warmup` batches on the same
    network (cuDNN's autotuning, compilation) and then `ready()` (a barrier) if given; options: setup's."""
    channels, size, classes = (1, 28, 10) if model_name == "lenet" else (3, 32, 100)
    images, labels = random_images(n + test, channels, size, classes)
    data = in_memory(images, labels, device, classes, test)
    learner = setup(model_name, classes, device, folder, batch_size=batch_size, **options)
    augment = model_name != "lenet"
    fit_seconds(learner, head(data, warmup * batch_size), augment=augment)
    if ready:
        ready()
    return fit_seconds(learner, data, augment=augment)


def lenet_worker(device, n, folder, *, test, barrier, spans):
    """One of K LeNet runs at once, in a process of its own as run_all.sh --per-gpu K starts them."""
    torch.backends.cudnn.benchmark = True
    spans.put(measure("lenet", torch.device(device), n, folder, batch_size=32, warmup=64, test=test,
                      ready=lambda: barrier.wait(600)))


def lenet_together(k, device, n, test, folder):
    """The slowest of K LeNet epochs run at the same time in K processes (they start together)."""
    ctx = multiprocessing.get_context("spawn")  # a fresh process each, with its own CUDA context
    barrier, spans = ctx.Barrier(k), ctx.Queue()
    workers = [ctx.Process(target=lenet_worker, args=(str(device), n, os.path.join(folder, str(i))),
                           kwargs=dict(test=test, barrier=barrier, spans=spans)) for i in range(k)]
    for w in workers:
        w.start()
    try:
        got = []
        while len(got) < k:
            try:
                got.append(spans.get(timeout=1))
            except queue.Empty:
                if any(w.exitcode not in (None, 0) for w in workers):
                    raise RuntimeError("a LeNet worker failed (its traceback is above)") from None
        return max(wall for wall, _ in got)
    finally:
        for w in workers:
            w.terminate()
            w.join()


def startup_seconds(data_dir, device, folder):
    """Seconds of train_mnist.py for one step on MNIST-sized files: a run's cost besides its epochs."""
    cmd = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_mnist.py"), "--data-dir",
           data_dir, "--epochs", "1", "--limit-train", "32", "--limit-test", "32", "--device", str(device),
           "--out", folder]
    start = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"train_mnist.py, exit {done.returncode}: {(done.stderr or done.stdout).strip()[-300:]}")
    return time.monotonic() - start


# ResNet-50 settings (amp, channels_last, compile), those that matter most first: the budget may end the list
RESNET = [("fp16", True, False), ("bf16", True, False), (None, True, False), ("fp16", False, False),
          ("fp16", True, True), ("bf16", False, False), (None, False, False)]


def grid_estimate(args, device):
    """What Table 1 and a CIFAR-100 ResNet-50 run would take here, measured within --budget s; JSON after each."""
    end, folder, test = time.monotonic() + args.budget, tempfile.mkdtemp(prefix="bench-"), args.test_images
    table1, resnet_data = (catalog.BENCH[k] for k in ("lenet", "resnet50"))
    lenet = dict(images=args.limit, test_images=test, batch=32, runs=len(grid.cells(datasets=(table1,))),
                 epochs=catalog.DATASETS[table1]["settings"]["epochs"], startup_s=None, waves=[])
    batch = 128 if device.type == "cuda" else 2  # the report's; 2 lets a CPU check this code (fp16 is slow there)
    resnet = dict(batch=batch, steps=args.resnet_steps, steps_per_epoch=math.ceil(TRAIN["resnet50"] / batch),
                  test_images=test, epochs=catalog.DATASETS[resnet_data]["settings"]["epochs"], configs=[])
    # CUDA MPS lets K processes share the GPU's engines at once instead of taking turns (docs/speed.md)
    mps = os.path.exists(os.path.join(os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps"), "control"))
    report = dict(device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                  torch=torch.__version__, cuda=torch.version.cuda, cores=os.cpu_count(), mps=mps,
                  budget_s=args.budget if args.budget < math.inf else None,
                  lenet=lenet, resnet50=resnet, skipped=[], failed=[])

    def attempt(what, seconds, measurement):
        """Measure if `seconds` of the budget are left; a failure is recorded, and the rest go on."""
        if time.monotonic() + seconds > end:
            report["skipped"].append(f"{what}: fewer than {seconds} s of the budget left")
        else:
            try:
                measurement()
                print(f"{what}: measured", flush=True)
            except (Exception, SystemExit) as e:  # noqa: BLE001: a path that fails on this device is a finding
                report["failed"].append(f"{what}: {type(e).__name__}: {e}")
                print(f"{what}: FAILED: {type(e).__name__}: {e}", flush=True)
        results.write_atomic(args.grid_estimate, lambda f: json.dump(report, f, indent=1))

    saves = math.ceil(resnet["epochs"] / parse("train_cifar.py", []).checkpoint_every)  # a run's checkpoints

    def resnet_config(amp, channels_last, compile):
        wall, train = measure("resnet50", device, args.resnet_steps * batch, os.path.join(folder, "resnet"),
                              batch_size=batch, warmup=args.warmup, test=test, amp=amp, channels_last=channels_last,
                              compile=compile)
        # the steps scaled to an epoch's; evaluation and checkpoint once, the test set to its 10,000 images
        checkpoint = checkpoint_seconds(os.path.join(folder, "resnet"))
        epoch = train * resnet["steps_per_epoch"] / args.resnet_steps + (wall - train - checkpoint) * TEST / test
        resnet["configs"].append(dict(amp=amp or "fp32", channels_last=channels_last, compile=compile,
                                      step_ms=1000 * train / args.resnet_steps, epoch_s=epoch + checkpoint,
                                      epoch_without_checkpoint_s=epoch, checkpoint_s=checkpoint,
                                      images_per_s=args.resnet_steps * batch / train,
                                      run_minutes=(epoch * resnet["epochs"] + checkpoint * saves) / 60))

    def lenet_wave(k):
        n, where = args.limit, os.path.join(folder, f"lenet{k}")
        wall = measure("lenet", device, n, where, batch_size=32, warmup=64, test=test)[0] if k == 1 else \
            lenet_together(k, device, n, test, where)
        epoch = wall * TRAIN["lenet"] / n  # all of it scaled to 60,000 images: an upper bound below them
        waves = math.ceil(lenet["runs"] / k)  # runs go K at a time; each starts a process (startup_s)
        lenet["waves"].append(dict(k=k, epoch_s=epoch, table1_minutes=waves * ((lenet["startup_s"] or 0)
                                                                                + lenet["epochs"] * epoch) / 60))

    def name(amp, channels_last, compile):
        return f"resnet50 {amp or 'fp32'}" + " channels-last" * channels_last + " compiled" * compile

    configs = RESNET[:args.resnet_configs]
    attempt(name(*configs[0]), 60, lambda: resnet_config(*configs[0]))
    if args.data_dir:
        attempt("run start-up", 30, lambda: lenet.update(startup_s=startup_seconds(args.data_dir, device, folder)))
    for k in [k for k in (1, 2, 4, 8, 12, 16) if k <= (os.cpu_count() or 1)]:  # a CPU core feeds each run
        attempt(f"lenet {k} at a time", 20 + 10 * k, lambda: lenet_wave(k))
    for config in configs[1:]:
        if config[2] and not compile_available():
            report["skipped"].append(f"{name(*config)}: compile: not available here (no C compiler or Python.h)")
            continue
        attempt(name(*config), 150 if config[2] else 45, lambda: resnet_config(*config))  # compiling: about 2 min
    shutil.rmtree(folder, ignore_errors=True)
    return 1 if report["failed"] else 0
