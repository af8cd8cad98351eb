"""Throughput benchmark (docs/speed.md): our training loop against the usual DataLoader loop and the floor.

    python bench.py --data-dir /usr/share/datasets/fashion-mnist        # real data (else random)

prints, on the chosen device (default: cuda if available), the images/s of LeNet training (the bare floor,
our loop, a Dataset of PIL images with DataLoader workers, our loop with per-example clipping), of CIFAR
augmentation (ours batched, torchvision's per image) and of ResNet-50 training, then the seconds of
instance-dependent noise (Xia et al.) for 50,000 CIFAR-sized images on the CPU (--noise-only: just this);
about three minutes on a 2-core CPU. --grid-estimate JSON (make gpu-check runs it): instead, what the
report's grids would take here (timing.py).
"""
import argparse
import math
import sys
import time
import warnings

import torch
import torch.nn.functional as F

import catalog
import instance_noise
import training
from data import channel_stats, in_memory, load_dataset, normalise, random_crop_flip
from errors import Parser
from timing import RESNET, TEST, grid_estimate, head, random_images, setup, timed


def our_loop(model_name, images, labels, device, batch_size, *, augment, steps=None, warmup=0, **options):
    """Images/s of train_epoch on `steps` batches (default: all) after `warmup` untimed ones; options: setup's."""
    n = len(labels) if steps is None else steps * batch_size
    data = in_memory(images[:n], labels[:n], device)
    learner = setup(model_name, 10, device, batch_size=batch_size, **options)
    generator = torch.Generator(device).manual_seed(0)
    if warmup:
        training.train_epoch(learner, head(data, warmup * batch_size), generator, batch_size=batch_size,
                             augment=augment)
    return n / timed(lambda: training.train_epoch(learner, data, generator, batch_size=batch_size,
                                                  augment=augment), device)


def plain_loop(batches, n, device):
    """Images/s of a fresh LeNet's forward, loss, backward, step over the `n` images of `batches` (device tensors)."""
    learner = setup("lenet", 10, device)
    net, optimizer = learner.net, learner.optimizer

    def epoch():
        for xb, yb in batches:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(net(xb), yb).backward()
            optimizer.step()
    return n / timed(epoch, device)


def bare_loop(images, labels, device, batch_size):
    """The floor: the plain loop over batches made before the clock starts."""
    x = normalise(images, *(v.float().view(1, -1, 1, 1) for v in channel_stats(images))).to(device)
    batches = [(x[i:i + batch_size], labels[i:i + batch_size].to(device)) for i in range(0, len(x), batch_size)]
    return plain_loop(batches, len(images), device)


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
    batches = ((xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)) for xb, yb in loader)
    return plain_loop(batches, len(images), device)  # the loader's workers start on the clock, as in a run


def augmentation(device, n, batch_size):
    """Images/s of our batched crop + flip + normalise and of torchvision's per-image transforms."""
    import torchvision.transforms as T
    from PIL import Image
    images = random_images(n, 3, 32, 10)[0]
    mean, std = channel_stats(images)
    on_mean, on_std = (v.float().view(1, -1, 1, 1).to(device) for v in (mean, std))
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


def noise_section():
    print("Instance-dependent noise (Xia et al.), 50,000 CIFAR-sized images, rho 0.4, median of 3:")
    for k in (10, 100):
        images, labels = random_images(50000, 3, 32, k)
        times = []
        for seed in range(3):
            start = time.perf_counter()
            generator = torch.Generator().manual_seed(seed)
            noisy = instance_noise.instance_noise(images.flatten(1), labels, k, 0.4, generator)
            times.append(time.perf_counter() - start)
        rate = (noisy != labels).double().mean().item()
        print(f"  K = {k:3d}                    {sorted(times)[1]:10.2f} s        (realised flip rate {rate:.4f})")


def main():
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device (default: %(default)s)")
    p.add_argument("--data-dir", help="folder with the Fashion-MNIST IDX files (default: random images)")
    p.add_argument("--limit", type=int, default=60000, help="LeNet training images per epoch (default: %(default)s)")
    p.add_argument("--workers", type=int, default=4, help="DataLoader workers of the usual loop (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="floor and ours: best of N epochs (default: %(default)s)")
    p.add_argument("--aug-images", type=int, default=20000, help="augmentation test images (default: %(default)s)")
    p.add_argument("--resnet-steps", type=int, help="ResNet-50 steps to time (default: 3 on cpu, 50 on cuda)")
    p.add_argument("--noise-only", action="store_true", help="only time the instance-dependent noise generator")
    p.add_argument("--grid-estimate", metavar="JSON", help="instead: time the LeNet and ResNet-50 epochs, and write "
                   "them and the implied grid times to JSON (make gpu-check; docs/speed.md)")
    p.add_argument("--budget", type=float, default=math.inf, help="--grid-estimate: start no measurement that would "
                   "not fit in this many seconds (default: no limit)")
    p.add_argument("--warmup", type=int, default=5,
                   help="--grid-estimate: untimed ResNet-50 steps first (default: %(default)s)")
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
    args.resnet_steps = args.resnet_steps or (3 if device.type == "cpu" else 50)
    if args.grid_estimate:
        return grid_estimate(args, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}")

    if args.data_dir:  # Fashion-MNIST, else random images of its shapes
        images, labels, _, _ = load_dataset(catalog.BENCH["offline"], args.data_dir)
        images, labels = images[:args.limit], labels[:args.limit]
    else:
        images, labels = random_images(args.limit, 1, 28, 10)
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

    steps, batch = args.resnet_steps, 32 if device.type == "cpu" else 128
    rate = our_loop("resnet50", *random_images(steps * batch, 3, 32, 10), device, batch, augment=True, steps=steps,
                    warmup=1)
    print(f"ResNet-50 (CIFAR), batch {batch}, float32, {steps} steps:")
    print(f"  our loop                   {rate:10,.1f} img/s  ({50000 / rate / 60:.1f} min per CIFAR epoch)")
    noise_section()


if __name__ == "__main__":
    sys.exit(main())
