"""Checkpoints that do not cost the run, and resuming where the first GPU run would fail (issue 28), on the
CPU and in-process: --checkpoint-every, a checkpoint whose data-order generator is another device's, and
fused SGD after a step that fp16's gradient scaler skipped."""
import csv
import json

import pytest
import torch

import config
import losses
import tiny_data
import train_cifar
import train_mnist
import training

TIMING = {"epoch_seconds", "images_per_second", "wall_seconds", "finished", "code"}


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mnist")
    tiny_data.make_idx_dataset(str(folder), n_train=200, n_test=64)
    return str(folder)


def rows(path):
    with open(path) as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


def argv(mnist, out, *more):
    return ["--data-dir", mnist, "--out", str(out), "--limit-train", "96", "--rho", "0.4", "--seed", "3", *more]


def interrupt_at(monkeypatch, epoch):
    """train_epoch as it is, but a Ctrl-C during epoch `epoch`."""
    real = training.train_epoch

    def train_epoch(*args, **kwargs):
        if kwargs["epoch"] == epoch:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(training, "train_epoch", train_epoch)


def test_a_resume_between_two_checkpoints_continues_from_the_last_and_ends_as_an_uninterrupted_run(
        mnist, tmp_path, monkeypatch, capsys):
    flags = ["--epochs", "4", "--checkpoint-every", "2"]
    assert train_mnist.main(argv(mnist, tmp_path / "whole", *flags)) == 0
    with monkeypatch.context() as m:
        interrupt_at(m, 4)  # epochs 1-3 done, the checkpoint is epoch 2's
        with pytest.raises(SystemExit) as e:
            train_mnist.main(argv(mnist, tmp_path / "cut", *flags))
    assert e.value.code == 130 and "its last checkpoint is epoch 2" in capsys.readouterr().err
    (run,) = (tmp_path / "cut" / "runs").iterdir()
    assert len(rows(run / "epochs.csv")) == 3  # every epoch's row is written, the checkpoint every 2
    assert train_mnist.main(argv(mnist, tmp_path / "cut", *flags, "--resume")) == 0
    assert "resuming after epoch 2" in capsys.readouterr().out
    for name in ("summary.csv", f"runs/{run.name}/epochs.csv"):
        assert rows(tmp_path / "cut" / name) == rows(tmp_path / "whole" / name)


@pytest.mark.slow
def test_a_cifar_run_resumed_between_checkpoints_ends_as_an_uninterrupted_one(tmp_path, monkeypatch, capsys):
    """train_cifar.py's default saves every 25 epochs; here every 2 of 3, cut in the third."""
    data = tmp_path / "cifar"
    tiny_data.make_cifar_dataset(str(data), "cifar10", n_train=48, n_test=16)
    flags = ["--data-dir", str(data), "--model", "resnet18", "--batch-size", "16", "--epochs", "3",
             "--checkpoint-every", "2", "--rho", "0.2"]
    assert train_cifar.main([*flags, "--out", str(tmp_path / "whole")]) == 0
    with monkeypatch.context() as m:
        interrupt_at(m, 3)
        with pytest.raises(SystemExit):
            train_cifar.main([*flags, "--out", str(tmp_path / "cut")])
    assert train_cifar.main([*flags, "--out", str(tmp_path / "cut"), "--resume"]) == 0
    assert "resuming after epoch 2" in capsys.readouterr().out
    assert rows(tmp_path / "cut" / "summary.csv") == rows(tmp_path / "whole" / "summary.csv")


def test_checkpoint_every_is_not_part_of_the_run_and_the_last_epoch_is_always_saved(mnist, tmp_path, monkeypatch):
    assert config.parse("train_mnist.py", ["--checkpoint-every", "3"]).settings() == \
        config.parse("train_mnist.py", []).settings()
    assert config.parse("train_cifar.py", []).checkpoint_every == 25
    saved = []
    real = training.save_checkpoint
    monkeypatch.setattr(training, "save_checkpoint", lambda path, state: saved.append(state["epoch"]) or real(path, state))
    assert train_mnist.main(argv(mnist, tmp_path, "--epochs", "5", "--checkpoint-every", "3")) == 0
    assert saved == [3, 5]


def test_a_checkpoint_made_on_another_kind_of_device_reseeds_the_data_order(mnist, tmp_path, monkeypatch, capsys):
    """A CPU generator's state has 5,056 bytes and a CUDA one's 16: set_state would raise either way. The
    run goes on from a generator seeded by (seed, epoch), says so in one line and in config.json."""
    with monkeypatch.context() as m:
        interrupt_at(m, 2)
        with pytest.raises(SystemExit):
            train_mnist.main(argv(mnist, tmp_path, "--epochs", "2"))
    (run,) = (tmp_path / "runs").iterdir()
    saved = torch.load(run / "checkpoint.pt", weights_only=True)
    saved["generator"] = torch.zeros(16, dtype=torch.uint8)  # a CUDA generator's state
    training.save_checkpoint(str(run / "checkpoint.pt"), saved)
    capsys.readouterr()
    assert train_mnist.main(argv(mnist, tmp_path, "--epochs", "2", "--resume")) == 0
    out = capsys.readouterr().out
    assert "data-order generator is another device's: re-seeded from (seed 3, epoch 1)" in out
    assert json.loads((run / "config.json").read_text())["reseeded_after_epoch"] == 1
    assert len(rows(tmp_path / "summary.csv")) == 1


@pytest.mark.parametrize("fused", [True, False])
def test_sgd_after_a_skipped_first_step_equals_plain_sgd(fused):
    """fp16's scaler skips a step whose gradients overflow (the first steps of a ResNet-50 do). Fused SGD
    would create its momentum buffers uninitialised on that first step and keep them; the Learner starts
    them at zero, so the next step is plain SGD's (dampening 0: the same mathematics)."""
    def learner(fused):
        torch.manual_seed(0)
        net = torch.nn.Linear(4, 3)
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4, fused=fused)
        run = config.parse("train_cifar.py", ["--amp", "fp16"])  # a gradient scaler
        return training.Learner(net, losses.make_loss("ce"), opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda n: 1),
                                run)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    ours = learner(fused)
    for overflow in (True, False):
        loss = ours.criterion(ours.net(x), y) * (float("inf") if overflow else 1.0)
        ours.scaler.scale(loss).backward()
        ours.scaler.step(ours.optimizer)
        ours.scaler.update()
        ours.optimizer.zero_grad()
    plain = learner(None)
    plain.criterion(plain.net(x), y).backward()
    torch.optim.SGD(plain.net.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4).step()
    for a, b in zip(ours.net.parameters(), plain.net.parameters()):
        assert torch.isfinite(a).all() and torch.allclose(a, b, atol=1e-6)
