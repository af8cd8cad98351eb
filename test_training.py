"""Tests for models.py, data.py, training.py, config.py, train_mnist.py and train_cifar.py on tiny
generated datasets. The scripts run in this process (main(argv)), on one CPU thread, except where the
process is the behaviour (a kill and its resume)."""
import contextlib
import io
import json
import math
import os
import re
import signal
import subprocess
import time

import numpy as np
import pytest
import torch
from scipy import stats

import catalog
import config
import conftest
import data
import grid
import losses
import models
import results
import tiny_data
import train_cifar
import train_mnist
import training
from conftest import only_run_dir, without_timing
from per_example import clipped_backward
from results import read_csv

SMALL = ["--limit-train", "64", "--limit-test", "64"]  # where a run's numbers play no part: 2 steps, 64 tested


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One CPU thread for every run of this module (a resumed run must have its checkpoint's): the tensors
    are small, and two threads' hand-offs cost more than they save, far more when `make test`'s two
    streams share two cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def mnist_args(mnist_dir, out, *extra):
    return ["--data-dir", mnist_dir, "--out", str(out), "--epochs", "2", *map(str, extra)]


def prepared(mnist_dir, *argv):
    """The Data of a train_mnist.py command line, on the CPU."""
    return data.prepare(config.parse("train_mnist.py", ["--data-dir", mnist_dir, *argv]), torch.device("cpu"))


def quietly(main, argv):
    """main(argv) with what it prints kept: (exit status, stdout)."""
    with contextlib.redirect_stdout(io.StringIO()) as out:
        code = main(argv)
    return code, out.getvalue()


# ---------------------------------------------------------------------------------------------
# Models.

def test_parameter_counts():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(models.LeNet5()) == 61706
    with torch.device("meta"):  # the architectures only: no memory, no initialisation
        assert count(models.resnet18(10)) == 11173962
        assert count(models.resnet50(10)) == 23520842        # kuangliu/pytorch-cifar's ResNet50
        assert count(models.resnet50(100)) == pytest.approx(23.7e6, rel=0.005)


def test_model_shapes():
    # LeNet's initialisation: test_lenet_initialisations
    net = models.LeNet5()
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert models.resnet18(100)(torch.zeros(2, 3, 32, 32)).shape == (2, 100)
    with torch.device("meta"):  # the layers only: no memory, no initialisation
        assert not models.has_batch_norm(net) and models.has_batch_norm(models.resnet18())
        # CIFAR stem: 3x3 stride-1 convolution, no max-pool
        resnet50 = models.resnet50()
        stem = resnet50.conv1
        assert stem.kernel_size == (3, 3) and stem.stride == (1, 1) and stem.padding == (1, 1)
        assert not any(isinstance(m, torch.nn.MaxPool2d) for m in resnet50.modules())


# ---------------------------------------------------------------------------------------------
# Label noise.

def noisy(labels, rho, k=10, kind="symmetric", dataset="mnist", seed=0):
    flips = catalog.DATASETS[dataset]["flips"] if kind == "asymmetric" else {}
    return data.add_label_noise(labels, rho, k, kind, data.flip_map(flips, k),
                                generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("rho", [0.2, 0.6])
def test_symmetric_noise_rate_and_uniformity(rho):
    n = 200_000
    clean = torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(1))
    y = noisy(clean, rho)
    rate = (y != clean).double().mean().item()
    # Windows from the law, each failing for < 1e-5 of seeds: 5 s.e. of a binomial rate (6e-7); a
    # chi-square p-value, uniform under the law; 4.9 s.e. for each of 10 classes (10 x 1e-6).
    assert abs(rate - rho) < 5 * math.sqrt(rho * (1 - rho) / n)      # never "flips" to the same class
    offsets = ((y - clean) % 10)[y != clean]
    counts = torch.bincount(offsets, minlength=10)[1:].numpy()        # uniform over the other 9 classes
    assert stats.chisquare(counts).pvalue > 1e-5
    for c in range(10):  # flips are independent of the class: each class's rate is rho
        n_c = (clean == c).sum().item()
        assert abs((y[clean == c] != c).double().mean().item() - rho) < 4.9 * math.sqrt(rho * (1 - rho) / n_c), c


def test_noise_depends_on_noise_seed_only(mnist_dir):
    base = prepared(mnist_dir, "--rho", "0.4", "--seed", "0").train_y
    assert torch.equal(base, prepared(mnist_dir, "--rho", "0.4", "--seed", "7").train_y)
    assert not torch.equal(base, prepared(mnist_dir, "--rho", "0.4", "--noise-seed", "1").train_y)


def test_rho_zero_changes_nothing():
    clean = torch.randint(0, 10, (1000,))
    assert torch.equal(noisy(clean, 0.0), clean)


# ---------------------------------------------------------------------------------------------
# Augmentation.

def test_random_crop_flip_stays_inside_padded_image_and_flips_half():
    n, c, h, w, pad = 4000, 2, 8, 8, 4
    base = torch.arange(1, c * h * w + 1).view(1, c, h, w).to(torch.uint8)  # distinct non-zero pixels
    out = data.random_crop_flip(base.expand(n, c, h, w), torch.Generator().manual_seed(0), pad=pad)
    assert out.shape == (n, c, h, w) and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(base, (pad,) * 4)[0]
    keys, windows = [], []
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            for flip in (False, True):
                crop = padded[:, dy:dy + h, dx:dx + w]
                keys.append((dy, dx, flip))
                windows.append(crop.flip(-1) if flip else crop)
    match = (out.unsqueeze(1) == torch.stack(windows).unsqueeze(0)).flatten(2).all(2)  # (n, windows)
    assert (match.sum(1) == 1).all(), "every output must be exactly one crop of the zero-padded image"
    found = [keys[i] for i in match.int().argmax(1).tolist()]
    flips = np.mean([f for _, _, f in found])
    assert abs(flips - 0.5) < 4.5 * math.sqrt(0.25 / n)  # fails for 7e-6 of seeds
    offsets = np.bincount([dy * (2 * pad + 1) + dx for dy, dx, _ in found], minlength=(2 * pad + 1) ** 2)
    # all 81 crops (each missing with probability (80/81)^4000 = 3e-22), uniformly (p uniform under the law)
    assert (offsets > 0).all() and stats.chisquare(offsets).pvalue > 1e-5


# ---------------------------------------------------------------------------------------------
# Learning-rate schedules.

class Built(Exception):
    """Raised where a script would start training, with the training.Learner it built."""


def built_learner(monkeypatch, main, argv):
    """The training.Learner (network, loss, optimiser, schedule) that `main(argv)` builds, without training."""
    learner = training.Learner

    def build(*args):
        raise Built(learner(*args))
    monkeypatch.setattr(training, "Learner", build)
    with pytest.raises(Built) as built:
        main(argv)
    return built.value.args[0]


def test_mnist_schedule_is_exponential_per_iteration(mnist_dir, tmp_path, monkeypatch):
    # lr_n = lr * 0.1^(n / 10000) at iteration n; that the optimiser takes it every step:
    # test_two_epoch_run_writes_well_formed_csvs
    learner = built_learner(monkeypatch, train_mnist.main, ["--data-dir", mnist_dir, "--out", str(tmp_path)])
    (f,) = learner.schedule.lr_lambdas
    assert [f(n) for n in (0, 5000, 10000, 20000)] == pytest.approx([1, 0.1 ** 0.5, 0.1, 0.01])
    assert learner.schedule.base_lrs == [1e-3] and isinstance(learner.optimizer, torch.optim.Adam)


@pytest.mark.parametrize("dataset,expected", [
    ("cifar10", {0: 1, 159: 1, 160: 0.1, 299: 0.1, 300: 0.01, 359: 0.01, 360: 0.001, 399: 0.001}),
    ("cifar100", {0: 1, 59: 1, 60: 0.2, 120: 0.04, 159: 0.04, 160: 0.008, 199: 0.008}),
])
def test_cifar_schedule_steps_at_the_papers_epochs(dataset, expected, cifar_dir, tmp_path, monkeypatch):
    learner = built_learner(monkeypatch, train_cifar.main, ["--data-dir", cifar_dir, "--out", str(tmp_path),
                                                            "--dataset", dataset, "--model", "resnet18"])
    (f,) = learner.schedule.lr_lambdas
    steps = math.ceil({"cifar10": 250, "cifar100": 300}[dataset] / catalog.DATASETS[dataset]["settings"]["batch_size"])
    for epoch, factor in expected.items():  # the whole epoch, its first step to its last
        assert f(epoch * steps) == pytest.approx(factor) and f(epoch * steps + steps - 1) == pytest.approx(factor)
    assert isinstance(learner.optimizer, torch.optim.SGD) and learner.optimizer.defaults["nesterov"]
    assert learner.schedule.base_lrs == [0.1]


# ---------------------------------------------------------------------------------------------
# Whole runs.

@pytest.fixture(scope="module")
def two_epoch_run(mnist_dir, tmp_path_factory):
    """(results folder, stdout) of a 2-epoch run of PHuber-CE at rho 0.2 on the 600 training images, shared."""
    out = tmp_path_factory.mktemp("two-epochs")
    code, stdout = quietly(train_mnist.main, mnist_args(mnist_dir, out, "--loss", "phuber_ce", "--rho", "0.2"))
    assert code == 0
    return out, stdout


def test_two_epoch_run_writes_well_formed_csvs(two_epoch_run):
    out, stdout = two_epoch_run
    (row,) = read_csv(out / "summary.csv")
    run_dir = only_run_dir(out)
    assert row["run"] == os.path.basename(run_dir)
    for key, value in dict(dataset="mnist", model="lenet", loss="phuber_ce", tau="10.0", rho="0.2", seed="0",
                           noise_seed="0", epochs="2", batch_size="32", lr="0.001", weight_decay="0.001",
                           train_size="600", test_size="200", device="cpu", torch=torch.__version__).items():
        assert row[key] == value, key
    assert abs(float(row["flip_rate"]) - 0.2) < 4.5 * math.sqrt(0.2 * 0.8 / 600) and len(row["label_hash"]) == 16
    assert 50 < float(row["test_acc"]) <= 100  # learned something on the patterned images
    epochs = read_csv(os.path.join(run_dir, "epochs.csv"))
    assert [r["epoch"] for r in epochs] == ["1", "2"]
    for r in epochs:
        for key in ("train_loss", "train_acc", "train_clean_acc", "memorised", "test_loss", "test_acc",
                    "test_ece", "epoch_seconds", "images_per_second", "lr"):
            assert math.isfinite(float(r[key])), key
        assert 0 <= float(r["memorised"]) <= 100 and r["val_acc"] == "" and r["clipped_clean"] == ""
    assert float(epochs[1]["step"]) == 2 * 19  # ceil(600 / 32) steps per epoch
    # the learning rate decays every iteration (train_mnist.py's schedule): after the first epoch's 19
    assert [float(r["lr"]) for r in epochs] == pytest.approx([1e-3, 1e-3 * 0.1 ** (19 / 10000)], rel=1e-9)
    assert row["test_acc"] == epochs[-1]["test_acc"]  # the final epoch's, never a best epoch
    counts = read_csv(os.path.join(run_dir, "noise_transitions.csv"))
    assert sum(int(v) for r in counts for k, v in r.items() if k != "clean") == 600
    meta = json.load(open(os.path.join(run_dir, "config.json")))
    assert meta["config"]["loss"] == "phuber_ce" and meta["versions"]["torch"] == torch.__version__
    assert not os.path.exists(os.path.join(run_dir, "checkpoint.pt"))
    assert stdout.count("epoch ") >= 2 and "final test accuracy" in stdout


def test_same_flags_same_numbers(two_epoch_run, mnist_dir, tmp_path):
    first, _ = two_epoch_run  # the same computation again, in the same process
    assert train_mnist.main(mnist_args(mnist_dir, tmp_path, "--loss", "phuber_ce", "--rho", "0.2")) == 0
    assert without_timing(read_csv(first / "summary.csv")) == without_timing(read_csv(tmp_path / "summary.csv"))
    a, b = (read_csv(os.path.join(only_run_dir(o), "epochs.csv")) for o in (first, tmp_path))
    assert without_timing(a) == without_timing(b)


def test_finished_run_is_skipped_and_force_reruns(mnist_dir, tmp_path, capsys):
    argv = mnist_args(mnist_dir, tmp_path, "--epochs", "1", *SMALL)
    train_mnist.main(argv)
    before = read_csv(tmp_path / "summary.csv")
    assert train_mnist.main(argv) == 0
    assert "already finished" in capsys.readouterr().out
    assert read_csv(tmp_path / "summary.csv") == before
    train_mnist.main(argv + ["--force"])
    after = read_csv(tmp_path / "summary.csv")
    assert len(after) == 1 and after[0]["finished"] >= before[0]["finished"]
    train_mnist.main(argv + ["--seed", "1"])  # another configuration: a second row, another folder
    assert len(read_csv(tmp_path / "summary.csv")) == 2 and len(os.listdir(tmp_path / "runs")) == 2


@pytest.mark.slow
def test_kill_and_resume_equals_uninterrupted(mnist_dir, tmp_path, python, capsys):
    # The kill is the behaviour: a process of the script, killed once its first checkpoint is written.
    # The resume and the uninterrupted run: in this process, with the killed one's single thread.
    flags = ["--data-dir", mnist_dir, "--epochs", "4", "--rho", "0.4", "--loss", "phuber_gce"]
    out = tmp_path / "killed"
    proc = subprocess.Popen([python, "train_mnist.py", *flags, "--out", str(out)], cwd=conftest.ROOT,
                            stdout=subprocess.DEVNULL, env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.time() + 120
    while not (os.path.isdir(out / "runs") and os.listdir(out / "runs") and
               os.path.exists(os.path.join(only_run_dir(out), "checkpoint.pt"))):
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not os.path.exists(out / "summary.csv")  # killed mid-run: nothing claimed finished
    with pytest.raises(SystemExit) as again:
        train_mnist.main(flags + ["--out", str(out)])
    assert again.value.code == 2 and "--resume" in capsys.readouterr().err  # never silently restarts
    assert train_mnist.main(flags + ["--out", str(out), "--resume"]) == 0
    assert train_mnist.main(flags + ["--out", str(tmp_path / "full")]) == 0
    assert without_timing(read_csv(out / "summary.csv")) == without_timing(read_csv(tmp_path / "full" / "summary.csv"))
    full, resumed = (read_csv(os.path.join(only_run_dir(d), "epochs.csv")) for d in (tmp_path / "full", out))
    assert without_timing(full) == without_timing(resumed) and len(resumed) == 4


@pytest.mark.parametrize("saved_with,resumed_with", [(True, None), (None, True)])
def test_a_checkpoint_resumes_with_the_optimiser_kernels_of_its_new_device(saved_with, resumed_with):
    # A run checkpointed on a GPU (fused kernels: training.fused) resumes on the CPU with the default
    # ones, and back: torch's load_state_dict alone would take the checkpoint's flag.
    torch.manual_seed(0)
    net = models.LeNet5()
    x, y = tiny_batch()
    first = torch.optim.Adam(net.parameters(), fused=saved_with)
    losses.ce(net(x), y).backward()
    first.step()
    again = torch.optim.Adam(net.parameters(), fused=resumed_with)
    training.load_optimizer(again, first.state_dict())
    assert [g["fused"] for g in again.param_groups] == [resumed_with]
    assert all(s["step"].item() == 1 and s["step"].dtype == torch.float32 for s in again.state.values())
    scaler = torch.amp.GradScaler("cpu")  # fp16's scaler hands a fused optimiser its inf check, and it steps
    scaler.scale(losses.ce(net(x), y)).backward()
    scaler.step(again)
    assert all(s["step"].item() == 2 for s in again.state.values())


@pytest.mark.parametrize("flags,message", [
    (["--loss", "huber"], "'huber'"), (["--loss", "phuber_ce", "--tau", "1"], "tau=1.0"),
    (["--loss", "phuber_ce", "--tau", "0.5"], "tau=0.5"), (["--loss", "gce", "--q", "1.5"], "q=1.5"),
    (["--rho", "1"], "--rho 1.0"), (["--rho", "-0.1"], "--rho -0.1"), (["--epochs", "0"], "--epochs 0"),
    (["--batch-size", "0"], "--batch-size 0"), (["--clip-norm", "0"], "--clip-norm 0.0"),
    (["--val-split", "1"], "--val-split 1.0"), (["--loss", "ce", "--tau", "2"], "does not take tau"),
    (["--clip-mode", "per-example"], "needs --clip-norm"), (["--rho", "x"], "invalid float value: 'x'"),
    (["--device", "gpu0"], "--device 'gpu0'"),
])
def test_bad_flags_exit_2_with_one_line(flags, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        train_mnist.main(["--out", str(tmp_path / "out"), *flags])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not os.path.exists(tmp_path / "out")


def test_per_example_clipping_refused_for_batch_norm(cifar_dir, tmp_path):
    with pytest.raises(SystemExit) as e:
        train_cifar.main(["--data-dir", cifar_dir, "--out", str(tmp_path), "--model", "resnet18",
                          "--clip-norm", "1", "--clip-mode", "per-example"])
    assert e.value.code == 2


def test_missing_data_is_one_clear_line_and_exit_3(tmp_path, capsys):
    empty = conftest.unreachable_folder(tmp_path)
    with pytest.raises(SystemExit) as e:
        train_mnist.main(["--data-dir", str(empty), "--out", str(tmp_path / "out")])
    assert e.value.code == 3  # run_all.sh: skipped (data unavailable)
    line = capsys.readouterr().err.strip()
    assert len(line.splitlines()) == 1
    assert str(empty) in line and "train-images-idx3-ubyte" in line and "t10k-labels-idx1-ubyte" in line
    assert not os.path.exists(tmp_path / "out" / "summary.csv")


def test_non_finite_loss_stops_cleanly(mnist_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        train_mnist.main(mnist_args(mnist_dir, tmp_path, "--lr", "1e30", *SMALL))
    assert e.value.code == 1
    assert "non-finite training loss at epoch 1, step" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "summary.csv")


@pytest.mark.parametrize("layout", ["torchvision", "gzip"])
def test_dataset_layouts(layout, tmp_path):
    if layout == "torchvision":
        tiny_data.make_idx_dataset(str(tmp_path / "FashionMNIST" / "raw"), n_train=50, n_test=20)
    else:
        tiny_data.make_idx_dataset(str(tmp_path), n_train=50, n_test=20, gz=True)
    train_x, train_y, test_x, test_y = data.load_dataset("fashion-mnist", str(tmp_path))
    assert train_x.shape == (50, 1, 28, 28) and test_x.shape == (20, 1, 28, 28)
    assert train_x.dtype == torch.uint8 and train_y.dtype == torch.int64 and len(test_y) == 20


def test_prepare_data_describes_dataset(cifar_dir, capsys):
    assert train_cifar.main(["--data-dir", cifar_dir, "--dataset", "cifar100", "--prepare-data"]) == 0
    assert "300 training and 100 test images of shape (3, 32, 32)" in capsys.readouterr().out


# Mixed precision on CIFAR is covered on LeNet below: the CPU's float16/bfloat16 convolutions in a
# ResNet take minutes, and the autocast / scaler code path is the same one.
@pytest.mark.slow  # a ResNet-18 and its checkpoint: seconds, even for its 4 samples
@pytest.mark.parametrize("dataset,extra", [("cifar10", []), ("cifar100", ["--channels-last"])])
def test_cifar_runs_with_every_option_on_cpu(cifar_dir, tmp_path, dataset, extra):
    argv = ["--data-dir", cifar_dir, "--dataset", dataset, "--model", "resnet18", "--epochs", "1", "--batch-size", "2",
            "--limit-train", "4", "--limit-test", "4", "--out", str(tmp_path), "--loss", "phuber_ce", "--tau", "2",
            *extra]
    assert train_cifar.main(argv) == 0
    (row,) = read_csv(tmp_path / "summary.csv")
    assert row["dataset"] == dataset and row["milestones"] == ("160 300 360" if dataset == "cifar10" else "60 120 160")
    assert row["momentum"] == "0.1" and math.isfinite(float(row["test_acc"]))


@pytest.mark.parametrize("extra", [["--amp", "bf16", "--clip-norm", "0.1"], ["--amp", "fp16", "--clip-norm", "0.1"]])
def test_mnist_runs_with_amp_and_clipping(mnist_dir, tmp_path, extra):
    # 8 steps (2 epochs of 128 samples: the CPU's half-precision convolutions are slow), tested on all 200
    argv = mnist_args(mnist_dir, tmp_path, "--rho", "0.2", "--limit-train", "128", *extra)
    assert train_mnist.main(argv) == 0
    (row,) = read_csv(tmp_path / "summary.csv")
    # it learns: 20% is 4.5 s.e. above the 10% of a guess on 200 test images
    assert math.isfinite(float(row["train_loss"])) and float(row["test_acc"]) > 20


@pytest.mark.slow  # torch.compile's tracing: seconds, even for LeNet
def test_mnist_runs_compiled(mnist_dir, tmp_path, monkeypatch):
    # --compile's plumbing (the compiled forward trains and evaluates; the optimiser's default kernels), traced
    # by TorchDynamo but run eagerly: inductor's C++ code generation takes minutes on a CPU (the CUDA tier,
    # test_cuda.py, compiles with it and compares with the eager network)
    compiled, real_compile = [], torch.compile

    def compile_eagerly(net, **kwargs):
        compiled.append(net)
        return real_compile(net, backend="eager", **kwargs)
    monkeypatch.setattr(torch, "compile", compile_eagerly)
    argv = mnist_args(mnist_dir, tmp_path, "--rho", "0.2", "--limit-train", "128", "--compile")
    assert train_mnist.main(argv) == 0 and len(compiled) == 1
    (row,) = read_csv(tmp_path / "summary.csv")
    assert math.isfinite(float(row["train_loss"])) and float(row["test_acc"]) > 20


def test_expected_calibration_error_by_hand():
    # confidences 0.9 (correct), 0.9 (wrong), 0.6 (correct), 0.3 (wrong) -> bins 14, 14, 9, 4 of 15
    probs = torch.tensor([[0.9, 0.1, 0.0], [0.9, 0.05, 0.05], [0.6, 0.4, 0.0], [0.3, 0.35, 0.35]])
    logits = probs.clamp_min(1e-12).log()
    labels = torch.tensor([0, 1, 0, 2])
    # the last row predicts class 1 (0.35 > 0.3 after argmax: first max) with confidence 0.35
    expected = (abs(0.5 - 0.9) * 2 + abs(1 - 0.6) * 1 + abs(0 - 0.35) * 1) / 4
    assert training.expected_calibration_error(logits, labels) == pytest.approx(expected, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Noise models, their record, and the noisy validation split.

@pytest.mark.parametrize("dataset", list(catalog.DATASETS))
def test_asymmetric_flips_only_along_the_map_at_the_set_rate(dataset):
    k, rho, n = catalog.DATASETS[dataset]["classes"], 0.3, 400_000
    clean = torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(2))
    y = noisy(clean, rho, k, "asymmetric", dataset)
    target = data.flip_map(catalog.DATASETS[dataset]["flips"], k)
    changed = y != clean
    assert torch.equal(y[changed], target[clean[changed]])          # only along the map
    moved = target != torch.arange(k)
    assert not changed[~moved[clean]].any()                           # unmapped classes never flip
    per_class_n = n / k
    for c in torch.nonzero(moved).flatten().tolist():  # 5 s.e. for each of up to 100 classes: fails for < 6e-5 of seeds
        rate = changed[clean == c].double().mean().item()
        assert abs(rate - rho) < 5 * math.sqrt(rho * (1 - rho) / per_class_n), (dataset, c, rate)


def test_flip_maps_are_the_documented_ones():
    assert dict(catalog.DATASETS["mnist"]["flips"]) == {2: 7, 3: 8, 5: 6, 6: 5, 7: 1}
    assert dict(catalog.DATASETS["cifar10"]["flips"]) == {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}
    cifar100 = catalog.DATASETS["cifar100"]["flips"]
    coarse = catalog.CIFAR100_COARSE
    assert sorted(cifar100) == list(range(100)) and sorted(cifar100.values()) == list(range(100))  # a permutation
    assert all(coarse[a] == coarse[b] and a != b for a, b in cifar100.items())  # within the super-class
    assert [coarse.count(g) for g in range(20)] == [5] * 20
    assert cifar100[4] == 30 and cifar100[95] == 4  # aquatic mammals: beaver -> dolphin ... whale -> beaver


def test_noise_record_matches_the_labels(mnist_dir, tmp_path):
    d = prepared(mnist_dir, "--rho", "0.4", "--noise", "asymmetric")
    expected = torch.zeros(10, 10, dtype=torch.long)
    for c, y in zip(d.train_clean.tolist(), d.train_y.tolist()):
        expected[c, y] += 1
    assert torch.equal(d.record["transitions"], expected) and expected.sum() == 600
    assert d.record["flip_rate"] == pytest.approx((d.train_y != d.train_clean).double().mean().item())
    # the run's record is of the whole training set too, however few samples it trains on
    train_mnist.main(mnist_args(mnist_dir, tmp_path, "--epochs", "1", "--rho", "0.4", "--noise", "asymmetric", *SMALL))
    rows = read_csv(os.path.join(only_run_dir(tmp_path), "noise_transitions.csv"))
    written = torch.tensor([[int(r[f"noisy_{j}"]) for j in range(10)] for r in rows])
    assert torch.equal(written, expected)
    (summary,) = read_csv(tmp_path / "summary.csv")
    assert summary["label_hash"] == data.label_hash(d.train_y) and summary["noise"] == "asymmetric"


def test_label_hash_changes_with_one_label_only():
    labels = torch.randint(0, 10, (1000,), generator=torch.Generator().manual_seed(0))
    same = labels.clone()
    assert data.label_hash(labels) == data.label_hash(same)
    same[123] = (same[123] + 1) % 10
    assert data.label_hash(labels) != data.label_hash(same)
    assert data.label_hash(labels) == data.label_hash(labels.to(torch.int32))  # dtype does not matter


def test_validation_split_is_disjoint_noisy_and_shared_by_trials(mnist_dir):
    a = prepared(mnist_dir, "--rho", "0.4", "--val-split", "0.25", "--seed", "0")
    b = prepared(mnist_dir, "--rho", "0.4", "--val-split", "0.25", "--seed", "3")
    c = prepared(mnist_dir, "--rho", "0.4", "--val-split", "0.25", "--noise-seed", "1")
    assert len(a.val_y) == 150 and len(a.train_y) == 450
    train_rows = {bytes(x.numpy()) for x in a.train_x}
    assert not any(bytes(x.numpy()) in train_rows for x in a.val_x)   # disjoint
    assert abs((a.val_y != a.val_clean).double().mean().item() - 0.4) < 4.5 * math.sqrt(0.24 / 150)  # labels stay noisy
    assert torch.equal(a.val_x, b.val_x) and torch.equal(a.val_y, b.val_y)  # same for every trial
    assert not torch.equal(a.val_x, c.val_x)                                 # another noise seed: another split


def test_validation_accuracy_logged_every_epoch(mnist_dir, tmp_path):
    train_mnist.main(mnist_args(mnist_dir, tmp_path, "--rho", "0.4", "--val-split", "0.2", "--loss", "phuber_ce",
                                *SMALL))
    epochs = read_csv(os.path.join(only_run_dir(tmp_path), "epochs.csv"))
    assert len(epochs) == 2 and all(0 <= float(r["val_acc"]) <= 100 and r["val_clean_acc"] for r in epochs)
    (row,) = read_csv(tmp_path / "summary.csv")
    # 120 held out of the 600, then the first 64 of the other 480 trained on (--limit-train)
    assert row["val_size"] == "120" and row["train_size"] == "64" and row["val_acc"] == epochs[-1]["val_acc"]


# ---------------------------------------------------------------------------------------------
# Per-example clipping.

def tiny_batch(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def reference_clipped_mean(net, criterion, x, y, clip):
    """The slow way: one backward per sample, clip its whole gradient, average."""
    total = [torch.zeros_like(p) for p in net.parameters()]
    for i in range(len(y)):
        net.zero_grad()
        criterion(net(x[i:i + 1]), y[i:i + 1]).backward()
        grads = [p.grad.clone() for p in net.parameters()]
        norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
        factor = min(1.0, clip / (norm.item() + 1e-6))
        total = [t + factor * g for t, g in zip(total, grads)]
    return [t / len(y) for t in total]


def learner_of(net, criterion, *flags):
    """A training.Learner of `net` with plain SGD, configured by train_mnist.py's `flags`."""
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    return training.Learner(net, criterion, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda n: 1.0),
                            config.parse("train_mnist.py", list(flags)))


def per_example(net, criterion, x, y, clip):
    net.zero_grad()
    learner = learner_of(net, criterion, "--clip-norm", str(clip), "--clip-mode", "per-example")
    _, _, norms = clipped_backward(learner, x, y)
    return [p.grad.clone() for p in net.parameters()], norms


@pytest.mark.parametrize("clip", [0.05, 0.5])
def test_per_example_clipping_equals_the_slow_reference(clip):
    torch.manual_seed(0)
    net, criterion = models.LeNet5(), losses.make_loss("phuber_ce", tau=3)
    x, y = tiny_batch()
    fast, norms = per_example(net, criterion, x, y, clip)
    slow = reference_clipped_mean(net, criterion, x, y, clip)
    assert (norms > clip).any()  # the threshold bites
    for f, s in zip(fast, slow):
        torch.testing.assert_close(f, s, rtol=1e-4, atol=1e-6)


def test_per_example_clipping_is_a_no_op_above_every_norm():
    torch.manual_seed(0)
    net, criterion = models.LeNet5(), losses.make_loss("ce")
    x, y = tiny_batch()
    fast, norms = per_example(net, criterion, x, y, clip=1e6)
    assert (norms < 1e6).all()
    net.zero_grad()
    criterion(net(x), y).backward()
    for f, p in zip(fast, net.parameters()):
        torch.testing.assert_close(f, p.grad, rtol=1e-4, atol=1e-6)


def test_per_example_clipping_of_one_sample_is_global_clipping():
    torch.manual_seed(0)
    net, criterion = models.LeNet5(), losses.make_loss("ce")
    x, y = tiny_batch(n=1)
    fast, norms = per_example(net, criterion, x, y, clip=0.01)
    net.zero_grad()
    criterion(net(x), y).backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 0.01)
    for f, p in zip(fast, net.parameters()):
        torch.testing.assert_close(f, p.grad, rtol=1e-4, atol=1e-7)


def test_clipped_shares_on_a_hand_made_batch():
    logits = torch.eye(4) * 5                     # predicts 0, 1, 2, 3
    y = torch.tensor([0, 1, 2, 3])                # noisy labels: all fitted
    clean = torch.tensor([0, 1, 0, 0])            # samples 2 and 3 were corrupted
    norms = torch.tensor([0.5, 2.0, 3.0, 0.1])
    stats_ = training.epoch_stats(logits.argmax(1), y, clean, norms, 1.0)
    stats_["loss_sum"] = 2.0
    assert stats_["clipped_clean"] == 1 and stats_["clipped_corrupted"] == 1
    assert stats_["norm_sum_clean"] == pytest.approx(2.5) and stats_["norm_sum_corrupted"] == pytest.approx(3.1)
    assert stats_["memorised"] == 2 and stats_["corrupted_clean"] == 0 and stats_["correct_clean"] == 2
    row = results.epoch_row(stats_, dict(loss=0, nll=0, ece=0, acc=0), {}, epoch=1, steps=1, lr=1e-3,
                             train_seconds=1.0, seconds=1.0)
    assert row["clipped_clean"] == 50 and row["clipped_corrupted"] == 50 and row["memorised"] == 100
    assert row["grad_norm_clean"] == pytest.approx(1.25) and row["grad_norm_corrupted"] == pytest.approx(1.55)
    assert row["train_acc"] == 100 and row["train_clean_acc"] == 50 and row["train_loss"] == pytest.approx(0.5)


def test_per_example_run_logs_clipping(mnist_dir, tmp_path):
    train_mnist.main(mnist_args(mnist_dir, tmp_path, "--rho", "0.4", "--clip-norm", "0.5", "--clip-mode",
                                "per-example", "--amp", "bf16", "--epochs", "1", *SMALL))
    (row,) = read_csv(tmp_path / "summary.csv")
    assert row["clip_mode"] == "per-example" and "clip0.5pe" in row["run"]
    assert 0 <= float(row["clipped_clean"]) <= 100 and float(row["grad_norm_corrupted"]) > 0


# ---------------------------------------------------------------------------------------------
# The report's settings for single runs (issue 11): per-dataset loss defaults, --init, fp16.

@pytest.mark.parametrize("dataset,loss,expected", [("cifar10", "phuber_ce", 2.0), ("cifar100", "phuber_ce", 10.0),
                                                   ("cifar10", "phuber_gce", 10.0), ("mnist", "phuber_ce", 10.0)])
def test_single_run_takes_the_reports_tau_for_its_dataset(dataset, loss, expected):
    script = catalog.DATASETS[dataset]["script"]
    single = config.parse(script, ["--dataset", dataset, "--loss", loss])
    assert single.tau == expected
    cell = next(c for c in grid.cells(datasets=[dataset]) if c.argv[3] == loss and "-rho0-seed0" in c.id)
    assert results.run_name(single.settings()) == results.run_name(config.parse(script, list(cell.argv)).settings())
    assert config.parse(script, ["--dataset", dataset, "--loss", loss, "--tau", "3"]).tau == 3.0  # a flag wins


@pytest.mark.parametrize("dataset,loss,alpha,beta", [
    ("mnist", "sce", 0.01, 1.0), ("mnist", "nce_rce", 1.0, 10.0), ("fashion-mnist", "sce", 0.01, 1.0),
    ("cifar10", "sce", 0.1, 1.0), ("cifar10", "nce_rce", 1.0, 1.0), ("cifar100", "sce", 6.0, 0.1),
    ("cifar100", "nce_rce", 10.0, 0.1)])
def test_peer_losses_run_as_their_authors_configs_set_them(dataset, loss, alpha, beta):
    # HanxunH/Active-Passive-Losses configs/<dataset>/{sym,asym}/{sce,nce+rce}.yaml; Fashion-MNIST takes MNIST's
    script = catalog.DATASETS[dataset]["script"]
    c = config.parse(script, ["--dataset", dataset, "--loss", loss])
    assert (c.alpha, c.beta, c.A) == (alpha, beta, math.log(1e-4))
    papers = config.parse(script, ["--dataset", dataset, "--loss", loss, "--A", "-4", "--alpha", "2"])
    assert (papers.alpha, papers.beta, papers.A) == (2.0, beta, -4.0)  # flags win
    assert "-A-4-" in results.run_name(papers.settings()) and "-A-9.21034-" in results.run_name(c.settings())
    # the loss the scripts build of it (train_mnist.py, train_cifar.py)
    assert losses.make_loss(c.loss, check_targets=False, **c.loss_params()).params == dict(alpha=alpha, beta=beta,
                                                                                          A=math.log(1e-4))


def test_rce_constant_is_checked_and_only_for_the_losses_that_have_it(capsys):
    for argv, message in ((["--loss", "sce", "--A", "0"], "A=0.0 is not allowed"),
                          (["--loss", "ce", "--A", "-4"], "loss 'ce' does not take A")):
        with pytest.raises(SystemExit) as e:
            config.parse("train_mnist.py", argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert config.parse("train_mnist.py", ["--loss", "ce"]).settings()["A"] is None  # left out of the run's name


def test_help_shows_the_peer_losses_values_per_dataset_and_their_source(capsys):
    with pytest.raises(SystemExit):
        config.parse("train_cifar.py", ["--dataset", "cifar100", "--loss", "sce", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "sce 0.1 on cifar10, 6 on cifar100" in text and "sce 1 on cifar10, 0.1 on cifar100" in text  # alpha, beta
    assert "their authors' official configs" in text and "Active-Passive-Losses" in text
    assert "log(1e-4) = -9.21034 is the official codes'" in text and "-4 the papers'" in text


def test_help_shows_the_per_dataset_value(capsys):
    with pytest.raises(SystemExit):
        config.parse("train_cifar.py", ["--help"])
    assert "the report's phuber_ce 2 on cifar10" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("init,std,bias", [("report", 0.088, "zero"), ("authors-code", 0.1153, "default")])
def test_lenet_initialisations(init, std, bias):
    torch.manual_seed(0)
    net = models.LeNet5(init=init)
    layers = [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    weights = torch.cat([m.weight.detach().flatten() for m in layers])
    # std 0.08796 (report) or 0.1153 (standard normal cut at +-0.2, about uniform); s.e. 0.0002: 0.003 is > 10 s.e.
    assert weights.abs().max() <= 0.2 and weights.std().item() == pytest.approx(std, abs=0.003)
    for m in layers:
        bound = 1 / math.sqrt(m.weight[0].numel())  # PyTorch's default bias: uniform on +-1/sqrt(fan_in)
        if bias == "zero":
            assert (m.bias == 0).all()
        else:
            assert m.bias.abs().max() <= bound and m.bias.abs().max() > bound / 2


def test_init_is_a_setting_of_the_run(mnist_dir, tmp_path):
    names = set()
    for init in ("report", "authors-code"):
        train_mnist.main(mnist_args(mnist_dir, tmp_path, "--epochs", "1", "--init", init, *SMALL))
    for row in read_csv(tmp_path / "summary.csv"):
        names.add(row["run"])
        assert row["init"] in ("report", "authors-code")
    assert len(names) == 2
    with pytest.raises(SystemExit) as e:
        train_mnist.main(mnist_args(mnist_dir, tmp_path, "--init", "xavier"))
    assert e.value.code == 2


def test_documented_cifar_commands_use_the_reports_fp16():
    readme = " ".join(open(os.path.join(conftest.ROOT, "README.md")).read().split())
    commands = [c for c in re.findall(r"`((?:bash run_all\.sh|python train_cifar\.py)[^`]*)`", readme) if "cifar" in c]
    assert len(commands) >= 4 and all("--amp fp16" in c for c in commands), commands
    assert "--amp fp16" in train_cifar.__doc__.splitlines()[2]
