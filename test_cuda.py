"""The CUDA tier (issue 22): `pytest -m cuda`, skipped without a GPU, so that CI is unchanged. Each
GPU path is checked against the CPU's result or against an uninterrupted run: every loss in float32,
bfloat16 and float16; fp16 with the gradient scaler, and its resume; bf16 and channels-last ResNet
steps; --compile; per-example clipping; evaluation; no host synchronisation in a training step
(torch.cuda.set_sync_debug_mode("error")); two --per-gpu workers on one device.

CUDA_TIER_DEVICE=cpu runs every test on the CPU instead, without the one assertion only CUDA can make
(the sync debug mode): a check of these tests' own logic on a machine without a GPU, never a check of
a GPU path. `make gpu-check` runs the tier on a GPU (docs/speed.md).
"""
import copy
import functools
import math
import os

import pytest
import torch

import config
import losses
import models
import per_example
import train_cifar
import train_mnist
import training
from conftest import only_run_dir, run_all, without_timing
from data import in_memory, prepare
from results import read_csv

DEVICE = torch.device(os.environ.get("CUDA_TIER_DEVICE", "cuda"))
ON_CUDA = DEVICE.type == "cuda"
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(ON_CUDA and not torch.cuda.is_available(), reason="no CUDA device")]


@pytest.fixture
def float32():
    """Plain float32 on the device, to be compared with the CPU's: cuDNN convolves in TF32 by default."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture
def deterministic(monkeypatch):
    """cuDNN's deterministic algorithms only, so that two runs on the device can agree bit for bit."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)


def relative_error(got, expected):
    return ((got.float() - expected.float()).norm() / expected.float().norm()).item()


def mnist_on(device, mnist_dir):
    """conftest's tiny MNIST (600 training, 200 test images of learnable patterns), as a run loads it."""
    return prepare(config.parse("train_mnist.py", ["--data-dir", mnist_dir]), device)


def learner_of(net, criterion, script="train_mnist.py", *flags, optimizer=torch.optim.SGD, lr=0.1):
    """A training.Learner of `net` (on its device) configured by `script`'s `flags` (--amp, --channels-last,
    --compile, --clip-norm ...), with a constant learning rate."""
    opt = optimizer(net.parameters(), lr=lr)
    return training.Learner(net, criterion, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda n: 1.0),
                            config.parse(script, list(flags)))


class Recorded(torch.nn.Module):
    """Cross-entropy that keeps each value it returns (detached, no host sync): a training epoch's step losses."""

    def __init__(self):
        super().__init__()
        self.loss, self.values = losses.CrossEntropy(), []

    def forward(self, logits, targets):
        value = self.loss(logits, targets)
        self.values.append(value.detach())
        return value


# ---------------------------------------------------------------------------------------------
# The losses, against the CPU.

@pytest.mark.parametrize("name", list(losses.LOSSES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("clip", [None, 9.0])  # rows of norm about 9.5: LogitClip scales about half of them
def test_every_loss_matches_the_cpu(name, dtype, clip):
    g = torch.Generator().manual_seed(0)
    logits, targets = (3 * torch.randn(400, 10, generator=g)).to(dtype), torch.randint(0, 10, (400,), generator=g)

    def value_and_gradient(device):
        x = logits.to(device).requires_grad_()
        loss = losses.make_loss(name, logit_clip=clip)(x, targets.to(device))
        return loss.detach().cpu(), torch.autograd.grad(loss, x)[0].cpu()
    (value, grad), (cpu_value, cpu_grad) = value_and_gradient(DEVICE), value_and_gradient("cpu")
    assert value.dtype == torch.float32 and grad.dtype == dtype  # computed in float32, whatever the input
    torch.testing.assert_close(value, cpu_value, rtol=1e-5, atol=1e-7)  # sums in another order
    torch.testing.assert_close(grad, cpu_grad)  # within a rounding of dtype


# ---------------------------------------------------------------------------------------------
# fp16 with the gradient scaler: a resumed run is the uninterrupted run; resuming on another device.

def interrupt_after_epoch(monkeypatch, epoch):
    """The run stops, as at Ctrl-C, right after its checkpoint of `epoch`."""
    save = training.save_checkpoint

    def save_then_stop(path, state):
        save(path, state)
        if state.get("epoch") == epoch:
            raise KeyboardInterrupt
    monkeypatch.setattr(training, "save_checkpoint", save_then_stop)


def run_rows(out):
    """The summary row and the epoch rows of the one run in `out`, without its timings."""
    return without_timing(read_csv(out / "summary.csv") + read_csv(os.path.join(only_run_dir(out), "epochs.csv")))


def test_an_fp16_run_resumed_with_its_scaler_equals_an_uninterrupted_one(mnist_dir, tmp_path, monkeypatch,
                                                                          deterministic):
    # The scale grows every step here (torch's default: every 2000), so that within these 57 steps it
    # moves and overflowing steps are skipped: a resume that lost the scaler's state would train otherwise.
    monkeypatch.setattr(torch.amp, "GradScaler", functools.partial(torch.amp.GradScaler, growth_interval=1))
    argv = ["--data-dir", mnist_dir, "--epochs", "3", "--amp", "fp16", "--rho", "0.4", "--device", str(DEVICE)]
    assert train_mnist.main([*argv, "--out", str(tmp_path / "full")]) == 0
    interrupt_after_epoch(monkeypatch, 1)
    with pytest.raises(SystemExit) as stopped:
        train_mnist.main([*argv, "--out", str(tmp_path / "resumed")])
    assert stopped.value.code == 130
    checkpoint = os.path.join(only_run_dir(tmp_path / "resumed"), "checkpoint.pt")
    assert torch.load(checkpoint, weights_only=True)["scaler"]["scale"] != 2.0 ** 16  # not the initial state
    assert train_mnist.main([*argv, "--out", str(tmp_path / "resumed"), "--resume"]) == 0
    full, resumed = run_rows(tmp_path / "full"), run_rows(tmp_path / "resumed")
    assert len(full) == len(resumed) == 4
    for a, b in zip(full, resumed):  # CUDA's torch.bincount adds the calibration error's float weights
        assert float(a.pop("test_ece")) == pytest.approx(float(b.pop("test_ece")), rel=1e-5)  # in varying order
        assert a == b


@pytest.mark.parametrize("first,then", [("cpu", str(DEVICE)), (str(DEVICE), "cpu")])
def test_an_fp16_run_resumes_on_another_device(first, then, mnist_dir, tmp_path, monkeypatch):
    # fused optimiser kernels on CUDA only (training.fused): the checkpoint's own must not come along
    argv = ["--data-dir", mnist_dir, "--epochs", "2", "--amp", "fp16", "--out", str(tmp_path)]
    interrupt_after_epoch(monkeypatch, 1)
    with pytest.raises(SystemExit):
        train_mnist.main([*argv, "--device", first])
    assert train_mnist.main([*argv, "--device", then, "--resume"]) == 0
    (row,) = read_csv(tmp_path / "summary.csv")
    assert row["device"] == then and math.isfinite(float(row["train_loss"]))
    assert len(read_csv(os.path.join(only_run_dir(tmp_path), "epochs.csv"))) == 2


# ---------------------------------------------------------------------------------------------
# ResNet steps in bf16 and channels-last, --compile, per-example clipping, evaluation.

def first_resnet_step(*flags, batch=16):
    """(loss, weight change) of ResNet-50's first training step (training.train_epoch, augmented) on
    random CIFAR-100-sized images, with train_cifar.py's `flags` (--amp, --channels-last): plain SGD, so
    that the change is the gradient's."""
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, generator=g), \
        torch.randint(0, 100, (batch,), generator=g)
    torch.manual_seed(0)
    net = models.resnet50(100).to(DEVICE)
    net = net.to(memory_format=torch.channels_last) if "--channels-last" in flags else net
    before = [p.detach().clone() for p in net.parameters()]
    learner = learner_of(net, losses.CrossEntropy(), "train_cifar.py", *flags)
    stats = training.train_epoch(learner, in_memory(images, labels, DEVICE, 100),
                                 torch.Generator(DEVICE).manual_seed(0), batch_size=batch, augment=True)
    # one step: the epoch's loss is its loss
    return stats["loss_sum"] / batch, torch.cat([(p.detach() - b).flatten() for p, b in zip(net.parameters(), before)])


@pytest.mark.parametrize("flags", [["--amp", "bf16"], ["--channels-last"], ["--amp", "bf16", "--channels-last"]])
def test_resnet_steps_in_bf16_and_channels_last_match_float32(flags, float32):
    # The loss (forward): float32 in another layout differs only in the order of its sums (4e-6 on a
    # CPU); bfloat16 keeps 8 bits, 0.4% a rounding (0.2% on a CPU). The step's change (backward) is
    # ill-conditioned at initialisation, where batch norm makes gradients explode (Yang et al., ICLR
    # 2019): float32 in another layout agrees to 4% on a CPU (a layout error: 100% or more), and
    # bfloat16 keeps the size of the step but little of its direction (cosine 0.24 on a CPU).
    amp = "--amp" in flags
    loss, change = first_resnet_step()
    other_loss, other_change = first_resnet_step(*flags)
    assert other_loss == pytest.approx(loss, rel=2e-2 if amp else 1e-4)
    if not amp:
        assert relative_error(other_change, change) < 0.25
    assert 0.5 < (other_change.norm() / change.norm()).item() < 2 and other_change.isfinite().all()


def lenet_epoch(data, *flags):
    """Step losses of one LeNet epoch (training.train_epoch) with train_mnist.py's `flags` (--compile), and the
    logits it then predicts."""
    torch.manual_seed(0)
    net, criterion = models.LeNet5().to(DEVICE), Recorded()
    learner = learner_of(net, criterion, "train_mnist.py", *flags, optimizer=torch.optim.Adam, lr=1e-3)
    training.train_epoch(learner, data, torch.Generator(DEVICE).manual_seed(0), batch_size=32, augment=False)
    steps = math.ceil(len(data.train_y) / 32)
    logits = training.predict(learner, data.test_x, data.mean, data.std)
    return torch.stack(criterion.values[:steps]).cpu(), logits.cpu()


@pytest.mark.parametrize("fused", [True, None], ids=["fused", "default"])
def test_fp16_sgd_after_an_overflowing_first_step_equals_the_unfused_run(fused, float32):
    """The first fp16 steps of a ResNet-50 overflow (its stem's gradient of about 4 is 2.6e5 at the
    scaler's 2^16): the scaler skips them. Fused SGD created its momentum buffers uninitialised on that
    skipped step (torch/optim/sgd.py, _fused_sgd); the Learner starts them at zero. Forced here: an
    initial scale of 2^40 overflows the first step for sure."""
    torch.manual_seed(0)
    x, y = torch.randn(64, 3, 32, 32, device=DEVICE), torch.randint(0, 10, (64,), device=DEVICE)
    runs = []
    for kernels in (fused, False):
        torch.manual_seed(1)
        net = models.make_model("resnet18", 10, 3).to(DEVICE)
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.1, nesterov=True, weight_decay=5e-4,
                              fused=kernels if ON_CUDA else None)
        schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda n: 1)
        learner = training.Learner(net, losses.make_loss("ce"), opt, schedule, config.parse("train_cifar.py", ["--amp",
                                                                                                             "fp16"]))
        learner.scaler = torch.amp.GradScaler(DEVICE.type, init_scale=2.0 ** 40)
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            with learner.autocast():
                loss = learner.criterion(net(x), y)
            learner.scaler.scale(loss).backward()
            learner.scaler.step(opt)
            learner.scaler.update()
        assert learner.scaler.get_scale() < 2.0 ** 40  # a step was skipped
        runs.append(torch.cat([p.detach().flatten() for p in net.parameters()]))
    assert torch.isfinite(runs[0]).all()
    assert relative_error(runs[0], runs[1]) < 1e-3  # fp16 forward passes, other kernels: not bit for bit


# bfloat16: 3.5% from float32 on a CPU; clipping every sample to 0.05 scales the gradients about tenfold
@pytest.mark.parametrize("amp,tolerance", [([], 1e-4), (["--amp", "bf16"], 0.15)])
def test_per_example_clipping_matches_the_cpu(amp, tolerance, float32):
    torch.manual_seed(0)
    net, criterion = models.LeNet5(), losses.make_loss("phuber_ce", tau=3)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 1, 28, 28, generator=g), torch.randint(0, 10, (16,), generator=g)

    def clipped(device, amp):
        copy_ = copy.deepcopy(net).to(device)
        learner = learner_of(copy_, criterion, "train_mnist.py", "--clip-norm", "0.05", "--clip-mode", "per-example",
                             *amp)
        _, _, norms = per_example.clipped_backward(learner, x.to(device), y.to(device))
        return torch.cat([p.grad.flatten() for p in copy_.parameters()]).cpu(), norms.cpu()
    grads, norms = clipped(DEVICE, amp)
    cpu_grads, cpu_norms = clipped(torch.device("cpu"), [])
    assert (cpu_norms > 0.05).all()  # every sample is clipped: the clipping is what is compared
    assert relative_error(norms, cpu_norms) < tolerance and relative_error(grads, cpu_grads) < tolerance


@pytest.mark.parametrize("amp,margin", [([], 1e-4), (["--amp", "fp16"], 0.05)])
def test_evaluation_matches_the_cpu(amp, margin, mnist_dir, float32):
    # `margin` bounds how far the device's logits may be from the CPU's (float16 keeps 11 bits): a
    # prediction whose top two logits are closer than that, or a confidence that close to a bin edge
    # of the calibration error, may go either way and is not held against the device
    torch.manual_seed(0)
    net, cpu = models.LeNet5(), mnist_on(torch.device("cpu"), mnist_dir)
    device_data = mnist_on(DEVICE, mnist_dir)
    model, device_model = learner_of(net, losses.CrossEntropy()), learner_of(
        copy.deepcopy(net).to(DEVICE), losses.CrossEntropy(), "train_mnist.py", *amp)
    logits = training.predict(model, cpu.test_x, cpu.mean, cpu.std)
    device_logits = training.predict(device_model, device_data.test_x, device_data.mean, device_data.std).cpu()
    assert (device_logits - logits).abs().max() < margin
    top2 = logits.topk(2).values
    clear = top2[:, 0] - top2[:, 1] > 2 * margin
    assert (device_logits.argmax(1) == logits.argmax(1))[clear].all()
    confidence = torch.softmax(logits, 1).max(1).values * 15  # 15 bins (training.expected_calibration_error)
    undecided = (~clear).sum().item() + ((confidence - confidence.round()).abs() < 15 * margin).sum().item()
    ours = training.evaluate(device_model, device_data.test_x, device_data.test_y, device_data.mean, device_data.std)
    theirs = training.evaluate(model, cpu.test_x, cpu.test_y, cpu.mean, cpu.std)
    n = len(cpu.test_y)
    assert abs(ours["acc"] - theirs["acc"]) <= 100 * (~clear).sum().item() / n
    assert ours["ece"] == pytest.approx(theirs["ece"], abs=margin + 2 * undecided / n)  # 2/n: a sample changing bins
    for key in ("loss", "nll"):
        assert ours[key] == pytest.approx(theirs[key], abs=margin)


# ---------------------------------------------------------------------------------------------
# No host synchronisation in a training step; several runs on one device.

def strict_training(monkeypatch):
    """Every training step runs in torch's sync debug mode "error": a step that waits for the device
    raises, naming the operation. The mode ends where the epoch's one read starts (training.epoch_stats).
    Returns the list of epochs that reached that read."""
    reached, train_epoch, epoch_stats = [], training.train_epoch, training.epoch_stats

    def mode(name):
        if ON_CUDA:
            torch.cuda.set_sync_debug_mode(name)

    def strict_epoch(*args, **kwargs):
        mode("error")
        try:
            return train_epoch(*args, **kwargs)
        finally:
            mode("default")

    def stats(*args, **kwargs):
        mode("default")
        reached.append(True)
        return epoch_stats(*args, **kwargs)
    monkeypatch.setattr(training, "train_epoch", strict_epoch)
    monkeypatch.setattr(training, "epoch_stats", stats)
    return reached


@pytest.mark.parametrize("script,flags", [
    ("train_mnist.py", []),
    ("train_mnist.py", ["--amp", "fp16", "--clip-norm", "0.1"]),  # the scaler: unscale, clip, skip on inf
    ("train_mnist.py", ["--amp", "bf16", "--clip-norm", "0.1", "--clip-mode", "per-example", "--channels-last"]),
    ("train_cifar.py", ["--dataset", "cifar100", "--amp", "fp16", "--channels-last"]),  # the report's ResNet-50
    ("train_cifar.py", ["--dataset", "cifar10", "--model", "resnet18", "--amp", "bf16", "--loss", "phuber_gce",
                        "--logit-clip", "1", "--noise", "asymmetric", "--rho", "0.4"]),
])
def test_no_training_step_waits_for_the_device(script, flags, mnist_dir, cifar_dir, tmp_path, monkeypatch):
    reached = strict_training(monkeypatch)
    main, data_dir = (train_mnist.main, mnist_dir) if script == "train_mnist.py" else (train_cifar.main, cifar_dir)
    # three steps (32, 32, 16); the CPU self-check: two of 4 (float16 convolutions are very slow on a CPU)
    sizes = [] if script == "train_mnist.py" else ["--batch-size", "32", "--limit-train", "80"] if ON_CUDA else \
        ["--batch-size", "4", "--limit-train", "8", "--limit-test", "4"]
    assert main(["--data-dir", data_dir, "--out", str(tmp_path), "--epochs", "1", "--device", str(DEVICE), *sizes,
                 *flags]) == 0
    assert reached == [True]  # the epoch ran every step in "error" mode up to its statistics


def test_two_workers_share_one_device(data_root, tmp_path):
    # the self-check on a CPU makes one "GPU" whose cells run on the CPU (--device cpu overrides cuda)
    env, device = ({}, []) if ON_CUDA else ({"CUDA_VISIBLE_DEVICES": "0"}, ["--device", "cpu"])
    result = run_all("--gpus", "0", "--per-gpu", "2", "--quick", "--datasets", "mnist", "--losses", "ce,linear",
                     "--rhos", "0", "--out", str(tmp_path), "--", "--data-dir", data_root, *device, env=env)
    assert "2 ran, 0 already finished" in result.stdout
    assert [r["device"] for r in read_csv(tmp_path / "summary.csv")] == [str(DEVICE)] * 2


# Last in the tier: it compiles from a cold cache (minutes), so that the time limit cuts it and nothing else.
@pytest.mark.skipif(not config.compile_available(), reason="compile: not available here (no C compiler or Python.h)")
def test_a_compiled_lenet_trains_and_predicts_as_the_eager_one(mnist_dir, float32):
    data = mnist_on(DEVICE, mnist_dir)
    eager_losses, eager_logits = lenet_epoch(data)
    assert eager_losses[-1] < 0.5 * eager_losses[0]  # it learns: a wrong gradient would show below
    compiled_losses, compiled_logits = lenet_epoch(data, "--compile")
    torch.testing.assert_close(compiled_losses, eager_losses, rtol=1e-3, atol=1e-5)  # fused kernels: other sums
    torch.testing.assert_close(compiled_logits, eager_logits, rtol=1e-3, atol=1e-4)
