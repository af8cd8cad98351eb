"""Throughput benchmark: our training loop against the usual DataLoader loop and the bare floor.

    python bench.py --data-dir /usr/share/datasets/fashion-mnist        # real data (else random)

prints, for the chosen device (default: cuda if available):
  1. LeNet training images/s: the floor (a bare forward/backward/step loop over pre-made,
     pre-normalised batches), our loop (training.train_epoch itself: uint8 data on the device, per-epoch
     permutation, on-device normalisation, statistics kept on the device), the usual way
     (torchvision-style Dataset returning PIL images, ToTensor + Normalize, DataLoader workers),
     and our loop with per-example clipping (torch.func per-sample gradients);
  2. CIFAR augmentation images/s: our batched crop + flip + normalise against torchvision's
     per-image RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize;
  3. ResNet-50 (CIFAR variant) training images/s with our loop;
  4. instance-dependent label noise (data.instance_noise) for 50,000 CIFAR-sized images, K = 10
     and 100, on the raw pixels (Xia et al.'s features, the default), on the CPU (where it always
     runs). --noise-only: just this.
Measurements only; nothing is asserted. On a 2-core CPU the whole run takes about three minutes.

--grid-estimate JSON (make gpu-check runs it) times instead one epoch as a run does it (the scripts' loop:
train, evaluate 10,000 test images, checkpoint) of LeNet on 60,000 random MNIST-sized images, alone
and K at a time in K processes, and of ResNet-50 at batch 128 on CIFAR-100-sized images per precision,
layout and compile (--resnet-steps steps after --warmup untimed ones, scaled to an epoch's 391), and
writes them with the implied time of Table 1 (72 runs, in waves of K) and of a 200-epoch CIFAR-100 run.
"""
import argparse
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
import warnings

import torch
import torch.nn.functional as F

import catalog
import grid
import losses
import models
import results
import training
from config import parse
from data import channel_stats, in_memory, instance_noise, load_dataset, normalise, random_crop_flip
from errors import Parser


def timed(fn, device):
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda device: None
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def mnist_like(args):
    """Fashion-MNIST if --data-dir holds it, else random images with the same shapes."""
    if args.data_dir:
        train_x, train_y, _, _ = load_dataset(catalog.BENCH["offline"], args.data_dir)
        return train_x[:args.limit], train_y[:args.limit]
    return random_images(args.limit, 1, 28, 10)


def random_images(n, channels, size, classes):
    g = torch.Generator().manual_seed(0)
    return (torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g),
            torch.randint(0, classes, (n,), generator=g))


def setup(model_name, classes, device, folder=None, *, batch_size=32, **flags):
    """A Learner as the training scripts build a run's, from config.parse of the report's settings of
    catalog.BENCH's dataset for the network and `flags` (amp="fp16", channels_last=True, ...): Adam for
    LeNet (train_mnist.py), SGD with Nesterov momentum for the ResNets (train_cifar.py), their kernels,
    the gradient scaler for fp16, cross entropy without a per-step check of the targets; a constant
    learning rate. Its results folder (for fit_seconds): `folder`."""
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
    """The first n training samples of `data`."""
    return dataclasses.replace(data, train_x=data.train_x[:n], train_y=data.train_y[:n],
                               train_clean=data.train_clean[:n])


def our_loop(model_name, images, labels, device, batch_size, *, augment, steps=None, warmup=0, **options):
    """Images/s of training.train_epoch on the first `steps` batches (default: all), after `warmup`
    untimed batches on the same network (cuDNN's autotuning, compilation); options: setup's."""
    n = len(labels) if steps is None else steps * batch_size
    data = in_memory(images[:n], labels[:n], device)
    learner = setup(model_name, 10, device, batch_size=batch_size, **options)
    generator = torch.Generator(device).manual_seed(0)
    if warmup:
        training.train_epoch(learner, head(data, warmup * batch_size), generator, batch_size=batch_size,
                             augment=augment)
    return n / timed(lambda: training.train_epoch(learner, data, generator, batch_size=batch_size,
                                                  augment=augment), device)


def bare_loop(images, labels, device, batch_size):
    """The floor: forward, loss, backward, step over batches made before the clock starts."""
    mean, std = channel_stats(images)
    x = ((images.float() - mean.float().view(1, -1, 1, 1)) / std.float().view(1, -1, 1, 1)).to(device)
    batches = [(x[i:i + batch_size], labels[i:i + batch_size].to(device)) for i in range(0, len(x), batch_size)]
    learner = setup("lenet", 10, device)
    net, optimizer = learner.net, learner.optimizer

    def epoch():
        for xb, yb in batches:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(net(xb), yb).backward()
            optimizer.step()
    return len(images) / timed(epoch, device)


class PILDataset(torch.utils.data.Dataset):
    """What torchvision's MNIST class does per item: a PIL image through the transforms."""

    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image
        array = self.images[i].permute(1, 2, 0).squeeze(-1).numpy()
        return self.transform(Image.fromarray(array)), int(self.labels[i])


def dataloader_loop(images, labels, device, batch_size, workers):
    """The usual way: DataLoader workers decoding PIL images and applying per-image transforms."""
    import torchvision.transforms as T
    mean, std = channel_stats(images)
    transform = T.Compose([T.ToTensor(), T.Normalize((mean / 255).tolist(), (std / 255).tolist())])
    loader = torch.utils.data.DataLoader(PILDataset(images, labels, transform), batch_size=batch_size,
                                         shuffle=True, num_workers=workers, pin_memory=device.type == "cuda",
                                         persistent_workers=False)
    learner = setup("lenet", 10, device)
    net, optimizer = learner.net, learner.optimizer

    def epoch():
        for xb, yb in loader:
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(net(xb), yb).backward()
            optimizer.step()
    return len(images) / timed(epoch, device)


def augmentation(device, n, batch_size):
    """Images/s of our batched crop + flip + normalise and of torchvision's per-image transforms."""
    import torchvision.transforms as T
    from PIL import Image
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    mean, std = channel_stats(images)
    on_mean, on_std = mean.float().view(1, -1, 1, 1).to(device), std.float().view(1, -1, 1, 1).to(device)
    on_device = images.to(device)
    generator = torch.Generator(device).manual_seed(0)

    def ours():
        for i in range(0, n, batch_size):
            normalise(random_crop_flip(on_device[i:i + batch_size], generator), on_mean, on_std)
    pil = [Image.fromarray(im.permute(1, 2, 0).numpy()) for im in images]  # decoded before the clock
    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize((mean / 255).tolist(), (std / 255).tolist())])

    def theirs():
        for i in range(0, n, batch_size):
            torch.stack([transform(im) for im in pil[i:i + batch_size]])
    return n / timed(ours, device), n / timed(theirs, torch.device("cpu"))


def instance_noise_seconds(k, repeats=3):
    """Median seconds of Xia et al.'s generator on 50,000 random CIFAR-sized images with K classes."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (50000, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, k, (len(images),), generator=g)
    times = []
    for seed in range(repeats):
        start = time.perf_counter()
        noisy = instance_noise(images.flatten(1), labels, k, 0.4, torch.Generator().manual_seed(seed))
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], (noisy != labels).double().mean().item()


def noise_section():
    print("Instance-dependent noise (Xia et al.), 50,000 CIFAR-sized images, rho 0.4, median of 3:")
    for k in (10, 100):
        seconds, rate = instance_noise_seconds(k)
        print(f"  K = {k:3d}                    {seconds:10.2f} s        (realised flip rate {rate:.4f})")


# ---------------------------------------------------------------------------------------------
# --grid-estimate: what the report's grids would take here (make gpu-check, docs/speed.md).

TRAIN = {"lenet": 60000, "resnet50": 50000}  # the training sets of MNIST and CIFAR-100 (each test set: 10,000)
TEST = 10000


def fit_seconds(learner, data, *, augment):
    """(wall seconds, training seconds) of one epoch as a run does it (the training scripts' loop):
    train (training.train_epoch), evaluate, checkpoint and write epochs.csv."""
    run, generator = training.RunFolder(learner.config), torch.Generator(learner.device).manual_seed(0)
    batch_size = learner.config.batch_size

    def epoch():
        with run.training(learner, data, generator):
            t0 = time.perf_counter()
            stats = training.train_epoch(learner, data, generator, batch_size=batch_size, augment=augment)
            train_seconds = time.perf_counter() - t0
            test = training.evaluate(learner, data.test_x, data.test_y, data.mean, data.std)
            val = training.evaluate(learner, data.val_x, data.val_y, data.mean, data.std, clean=data.val_clean)
            run.end_epoch(training.epoch_row(stats, test, val, epoch=1, steps=math.ceil(len(data.train_y) / batch_size),
                                             lr=learner.optimizer.param_groups[0]["lr"], train_seconds=train_seconds,
                                             seconds=time.perf_counter() - t0))
    with contextlib.redirect_stdout(io.StringIO()):  # the run's lines
        wall = timed(epoch, learner.device)
    return wall, len(data.train_y) / run.history[0]["images_per_second"]


def measure(model_name, device, n, folder, *, batch_size, warmup, test=TEST, ready=None, **options):
    """Time one epoch of `n` random images (fit_seconds) after an untimed one of `warmup` batches
    on the same network (cuDNN's autotuning, compilation), then `ready()` (a barrier) if given.
    Returns (wall seconds, training seconds); options: setup's flags."""
    size, classes = (28, 10) if model_name == "lenet" else (32, 100)
    images, labels = random_images(n + test, 1 if model_name == "lenet" else 3, size, classes)
    data = in_memory(images, labels, device, classes, test)
    learner = setup(model_name, classes, device, folder, batch_size=batch_size, **options)
    augment = model_name != "lenet"
    fit_seconds(learner, head(data, warmup * batch_size), augment=augment)
    if ready:
        ready()
    return fit_seconds(learner, data, augment=augment)


def lenet_worker(device, n, folder, *, test, barrier, spans):
    """One of K LeNet runs at once (a process of its own, as run_all.sh --per-gpu K starts them)."""
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
    """Measure, within --budget seconds, what Table 1 (72 LeNet runs) and one 200-epoch CIFAR-100
    ResNet-50 run would take here; write the figures to --grid-estimate as JSON after each."""
    end, folder, test = time.monotonic() + args.budget, tempfile.mkdtemp(prefix="bench-"), args.test_images
    table1, resnet_data = (catalog.BENCH[k] for k in ("lenet", "resnet50"))
    lenet = dict(images=args.limit, test_images=test, batch=32, runs=len(grid.cells(datasets=(table1,))),
                 epochs=catalog.DATASETS[table1]["settings"]["epochs"], startup_s=None, waves=[])
    batch = 128 if device.type == "cuda" else 2  # the report's; 2 lets a CPU check this code (fp16 is slow there)
    resnet = dict(batch=batch, steps=args.resnet_steps, steps_per_epoch=math.ceil(TRAIN["resnet50"] / batch),
                  test_images=test, epochs=catalog.DATASETS[resnet_data]["settings"]["epochs"], configs=[])
    report = dict(device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                  torch=torch.__version__, cuda=torch.version.cuda, cores=os.cpu_count(),
                  budget_s=args.budget if args.budget < math.inf else None,
                  lenet=lenet, resnet50=resnet, skipped=[], failed=[])

    def attempt(what, seconds, measurement):
        """Measure if at least `seconds` of the budget are left; a failure is recorded, and the rest go on."""
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

    def resnet_config(amp, channels_last, compile):
        wall, train = measure("resnet50", device, args.resnet_steps * batch, os.path.join(folder, "resnet"),
                              batch_size=batch, warmup=args.warmup, test=test, amp=amp, channels_last=channels_last,
                              compile=compile)
        # the steps scaled to an epoch's; evaluation and checkpoint once, the test set to its 10,000 images
        epoch = train * resnet["steps_per_epoch"] / args.resnet_steps + (wall - train) * TEST / test
        resnet["configs"].append(dict(amp=amp or "fp32", channels_last=channels_last, compile=compile,
                                      step_ms=1000 * train / args.resnet_steps, epoch_s=epoch,
                                      images_per_s=args.resnet_steps * batch / train,
                                      run_minutes=epoch * resnet["epochs"] / 60))

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
    for k in [k for k in (1, 2, 4, 8) if k <= (os.cpu_count() or 1)]:
        attempt(f"lenet {k} at a time", 20 + 10 * k, lambda: lenet_wave(k))
    for config in configs[1:]:
        attempt(name(*config), 150 if config[2] else 45, lambda: resnet_config(*config))  # compiling: about 2 min
    shutil.rmtree(folder, ignore_errors=True)
    return 1 if report["failed"] else 0


def main():
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device (default: %(default)s)")
    p.add_argument("--data-dir", help="folder with the Fashion-MNIST IDX files (default: random images)")
    p.add_argument("--limit", type=int, default=60000, help="LeNet training images per epoch (default: %(default)s)")
    p.add_argument("--workers", type=int, default=4, help="DataLoader workers of the usual loop (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="best of this many epochs for the floor and our loop "
                   "(default: %(default)s)")
    p.add_argument("--aug-images", type=int, default=20000, help="images for the augmentation test (default: %(default)s)")
    p.add_argument("--resnet-steps", type=int, help="ResNet-50 steps to time (default: 3 on cpu, 50 on cuda)")
    p.add_argument("--noise-only", action="store_true", help="only time the instance-dependent noise generator")
    p.add_argument("--grid-estimate", metavar="JSON", help="instead: time the LeNet epoch alone and K at a time and "
                   "the ResNet-50 CIFAR-100 epoch per precision, layout and compile, and write them and the implied "
                   "grid times to JSON (make gpu-check; docs/speed.md)")
    p.add_argument("--budget", type=float, default=math.inf, help="--grid-estimate: start no measurement that would "
                   "not fit in this many seconds (default: no limit)")
    p.add_argument("--warmup", type=int, default=5, help="--grid-estimate: untimed ResNet-50 steps first "
                   "(default: %(default)s)")
    p.add_argument("--test-images", type=int, default=TEST, help="--grid-estimate: test images evaluated per epoch; "
                   "fewer are scaled to 10,000 (default: %(default)s)")
    p.add_argument("--resnet-configs", type=int, default=len(RESNET), help="--grid-estimate: measure the first N "
                   "ResNet-50 settings only (make gpu-check's self-check on a CPU: 1) (default: all %(default)s)")
    args = p.parse_args()
    for flag in ("limit", "resnet_steps", "warmup", "test_images", "budget", "resnet_configs"):
        if getattr(args, flag) is not None and not getattr(args, flag) > 0:
            p.error(f"--{flag.replace('_', '-')} {getattr(args, flag)} is not allowed: it must be positive")
    if args.noise_only:
        return noise_section()
    warnings.filterwarnings("ignore", message="This DataLoader will create")  # 4 workers on 2 cores: on purpose
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    if args.grid_estimate:
        args.resnet_steps = args.resnet_steps or (3 if device.type == "cpu" else 50)
        return grid_estimate(args, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}")

    images, labels = mnist_like(args)
    print(f"LeNet, batch 32, {len(images)} {'Fashion-MNIST' if args.data_dir else 'random'} images per epoch "
          f"(floor and ours: best of {args.repeats}):")
    our_loop("lenet", images[:2048], labels[:2048], device, 32, augment=False)  # warm-up
    # best of --repeats, alternating, so that a noisy neighbour hurts neither side more
    floor = ours = 0.0
    for _ in range(args.repeats):
        floor = max(floor, bare_loop(images, labels, device, 32))
        ours = max(ours, our_loop("lenet", images, labels, device, 32, augment=False))
    usual = dataloader_loop(images, labels, device, 32, args.workers)
    per_example = our_loop("lenet", images, labels, device, 32, augment=False, clip_norm=0.1, clip_mode="per-example")
    print(f"  bare loop (floor)          {floor:10,.0f} img/s  {len(images) / floor:6.1f} s/epoch")
    print(f"  our loop                   {ours:10,.0f} img/s  {len(images) / ours:6.1f} s/epoch  "
          f"({floor / ours:.2f}x the floor's time)")
    print(f"  DataLoader + PIL ({args.workers} workers) {usual:10,.0f} img/s  {len(images) / usual:6.1f} s/epoch  "
          f"(ours is {ours / usual:.1f}x faster)")
    print(f"  our loop, per-example clip {per_example:10,.0f} img/s  {len(images) / per_example:6.1f} s/epoch  "
          f"({ours / per_example:.2f}x the time of our plain loop)")

    ours_aug, theirs_aug = augmentation(device, args.aug_images, 128)
    print(f"CIFAR augmentation (crop + flip + normalise), {args.aug_images} images:")
    print(f"  ours, batched on {device.type:6s}    {ours_aug:10,.0f} img/s")
    print(f"  torchvision per image      {theirs_aug:10,.0f} img/s  (ours is {ours_aug / theirs_aug:.0f}x faster)")

    steps = args.resnet_steps or (3 if device.type == "cpu" else 50)
    batch = 32 if device.type == "cpu" else 128
    rate = our_loop("resnet50", *random_images(steps * batch, 3, 32, 10), device, batch, augment=True, steps=steps,
                    warmup=1)
    print(f"ResNet-50 (CIFAR), batch {batch}, float32, {steps} steps:")
    print(f"  our loop                   {rate:10,.1f} img/s  ({50000 / rate / 60:.1f} min per CIFAR epoch)")
    noise_section()


if __name__ == "__main__":
    sys.exit(main())
