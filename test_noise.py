"""Tests for the noise of issue 13: instance-dependent noise (Xia et al., 2020), human noise from
CIFAR-N label files (generated here in the real format), and LogitClip as a training flag."""
import hashlib
import io
import json
import math
import os
import pickle
import signal

import numpy as np
import pytest
import torch
from scipy import stats

import aggregate
import config
import conftest
import data
import grid
import instance_noise
import results
import runner
import tiny_data
import train_cifar
import train_mnist
from conftest import only_run_dir
from results import read_csv


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One CPU thread for the in-process runs: their tensors are small, and two threads' hand-offs cost more
    than they save (far more when `make test`'s two streams share two cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_all_list(capsys, *args):
    """(exit status, stdout, stderr) of `run_all.sh ARGS` with --list (or refused before it), as runner.main,
    which run_all.sh runs, gives them in-process: a listing starts no process. Its signal handlers (it
    installs its Ctrl-C and SIGTERM handling first) are pytest's again afterwards."""
    assert "--list" in args  # a listing only: never a grid run in the tests' process
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE)}
    capsys.readouterr()
    try:
        code = runner.main(list(args))
    except SystemExit as e:
        code = e.code
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------------------------------
# Instance-dependent noise.

def clustered(n_centres=100, per_centre=20, k=10, d=64, seed=0):
    """Images in tight clusters (one class per cluster): near-duplicates to compare how they flip."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_centres, d, generator=g)
    centre = torch.arange(n_centres).repeat_interleave(per_centre)
    images = centres[centre] + 0.05 * torch.randn(len(centre), d, generator=g)
    return images, centre % k, centre


def flip_law(rho):
    """The law of Xia et al.'s per-sample flip rates: N(rho, 0.1^2) truncated to [0, 1]."""
    return stats.truncnorm((0 - rho) / 0.1, (1 - rho) / 0.1, loc=rho, scale=0.1)


def within_binomial_error(rate, p, n):
    """Whether a rate over n independent Bernoulli(p) draws is within 4.5 standard errors of p: it is
    not for fewer than 1 in 100,000 seeds (a window that follows from the law, not from one seed)."""
    return abs(rate - p) < 4.5 * math.sqrt(p * (1 - p) / n)


def test_instance_noise_rate_is_within_sampling_error_of_its_mean():
    images, labels, _ = clustered(n_centres=1000)
    for rho in (0.2, 0.4):
        noisy = instance_noise.instance_noise(images, labels, 10, rho, torch.Generator().manual_seed(1))
        rate = (noisy != labels).double().mean().item()
        # Sample i flips with probability q_i, the q_i i.i.d. and independent of everything else: the
        # flips are i.i.d. Bernoulli(E q), the truncated normal's mean: 0.4000 at rho 0.4, but 0.2055 at
        # rho 0.2, where the cut at 0 lifts it.
        assert within_binomial_error(rate, flip_law(rho).mean(), len(labels)), (rho, rate)


def test_truncated_normal_has_the_right_distribution():
    for mean in (0.05, 0.4, 0.97):  # truncation at 0, none to speak of, truncation at 1
        q = instance_noise.truncated_normal(20_000, mean, 0.1, torch.Generator().manual_seed(0)).numpy()
        assert q.min() >= 0 and q.max() <= 1
        # under the law the p-value is uniform: three tests at 3e-5 fail together for < 1e-4 of seeds
        assert stats.kstest(q, flip_law(mean).cdf).pvalue > 3e-5, mean


def test_instance_noise_at_rho_zero_is_clean():
    images, labels, _ = clustered(n_centres=1000)
    assert torch.equal(instance_noise.instance_noise(images, labels, 10, 0.0, torch.Generator().manual_seed(0)), labels)
    low = instance_noise.instance_noise(images, labels, 10, 0.05, torch.Generator().manual_seed(0))
    # at rho = 0.05 the truncated normal's mean is 0.1009, not 0.05 (it is 0.0798 at rho = 0, which
    # instance_noise does not draw: rho = 0 is clean labels)
    assert within_binomial_error((low != labels).double().mean().item(), flip_law(0.05).mean(), len(labels))


def test_instance_noise_never_flips_a_sample_whose_rate_is_zero():
    images, labels, _ = clustered()
    rates = torch.rand(len(labels), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    rates[::2] = 0.0
    noisy = instance_noise.instance_flips(images, labels, 10, rates, torch.Generator().manual_seed(4))
    assert torch.equal(noisy[::2], labels[::2])
    # the others flip at their rates, uniform on [0, 1): each with probability 1/2
    assert within_binomial_error((noisy[1::2] != labels[1::2]).double().mean().item(), 0.5, len(labels) // 2)
    assert (noisy != labels).sum() == (noisy[1::2] != labels[1::2]).sum()


def test_instance_noise_is_a_function_of_its_seed():
    images, labels, _ = clustered()
    draw = lambda seed: instance_noise.instance_noise(images, labels, 10, 0.4, torch.Generator().manual_seed(seed))  # noqa
    assert torch.equal(draw(7), draw(7))
    assert not torch.equal(draw(7), draw(8))


def agreement(noisy, labels, centre):
    """Among flipped samples, the share of pairs from the same cluster (near-identical images) whose
    labels went to the same class: the x-dependence of where a label goes. Returns (share, pairs)."""
    same = total = 0
    flipped = noisy != labels
    for c in torch.unique(centre[flipped]).tolist():
        dest = noisy[flipped & (centre == c)]
        counts = torch.bincount(dest, minlength=10).double()
        same += (counts * (counts - 1)).sum().item() / 2
        total += len(dest) * (len(dest) - 1) // 2
    return same / total, total


def test_where_an_instance_label_goes_depends_on_the_image():
    images, labels, centre = clustered()
    instance = instance_noise.instance_noise(images, labels, 10, 0.4, torch.Generator().manual_seed(5))
    symmetric = data.add_label_noise(labels, 0.4, 10, "symmetric", None, generator=torch.Generator().manual_seed(5))
    # Near-identical images flip to the same class under instance noise: a cluster's scores x W[y] have
    # s.d. 8 (d = 64) against 0.4 for its images' differences, so its flips mostly share a destination.
    # The share is a mean over 100 clusters; over 200 seeds (of the images and the noise) it had mean
    # 0.81 and s.d. 0.028: 0.5 is 11 s.d. below.
    assert agreement(instance, labels, centre)[0] > 0.5
    # Under class-conditional noise destinations are independent and uniform over the other 9 classes:
    # each pair agrees with probability 1/9, and the pairs' indicators are pairwise independent (two
    # pairs sharing a sample agree together with probability 1/81), so the share has variance
    # (1/9)(8/9) / pairs.
    share, pairs = agreement(symmetric, labels, centre)
    assert within_binomial_error(share, 1 / 9, pairs)
    # ... and whether a label flips does not: Xia et al.'s rate is drawn per sample, independently of x,
    # so each cluster's flips are Binomial(20, E q). The chi-square p-value is then uniform (checked:
    # under 1e-5 for 4e-6 of 10^6 simulated tables of this shape).
    flips = torch.stack([(instance != labels)[centre == c].sum() for c in range(100)]).numpy()
    assert stats.chi2_contingency(np.stack([flips, 20 - flips])).pvalue > 1e-5


def test_instance_noise_in_a_run_is_recorded_like_every_noise(mnist_dir, tmp_path):
    argv = ["--data-dir", mnist_dir, "--out", str(tmp_path), "--limit-train", "32", "--limit-test", "32",
            "--epochs", "1", "--noise", "instance", "--rho", "0.4"]  # the noise and its record: all 600 samples
    assert train_mnist.main(argv) == 0
    (summary,) = read_csv(tmp_path / "summary.csv")
    assert summary["noise"] == "instance" and float(summary["rho"]) == 0.4
    counts = read_csv(os.path.join(only_run_dir(tmp_path), "noise_transitions.csv"))
    table = np.array([[int(r[f"noisy_{j}"]) for j in range(10)] for r in counts])
    assert table.sum() == 600 and float(summary["flip_rate"]) == pytest.approx(1 - np.trace(table) / 600)
    assert within_binomial_error(float(summary["flip_rate"]), flip_law(0.4).mean(), 600)
    assert train_mnist.main(argv + ["--force"]) == 0  # the same labels again: same seed, same hash
    assert len({r["label_hash"] for r in read_csv(tmp_path / "summary.csv")}) == 1


def test_instance_noise_runs_on_xia_et_al_features_and_records_them(mnist_dir, tmp_path):
    # Their generator (Part-dependent-label-noise tools.py, via data.py) multiplies the raw pixel values,
    # 0-255, flattened; the images as the network sees them are an option.
    train_x, train_y = data.load_dataset("mnist", mnist_dir)[:2]
    mean, std = (v.float().view(1, -1, 1, 1) for v in data.channel_stats(train_x))
    features = {"raw": train_x.float(), "normalised": data.normalise(train_x, mean, std)}
    expected = {name: data.label_hash(instance_noise.instance_noise(x.flatten(1), train_y, 10, 0.4, torch.Generator().manual_seed(
        data.derived_seed(0, 0)))) for name, x in features.items()}
    assert expected["raw"] != expected["normalised"]
    argv = ["--data-dir", mnist_dir, "--out", str(tmp_path), "--limit-train", "32", "--limit-test", "32",
            "--epochs", "1", "--noise", "instance", "--rho", "0.4"]  # the noise and its record: all 600 samples
    for flags in ([], ["--noise-features", "normalised"]):
        assert train_mnist.main(argv + flags) == 0
    rows = {r["noise_features"]: r for r in read_csv(tmp_path / "summary.csv")}
    assert sorted(rows) == ["normalised", "raw"]  # two runs, two names: the features are part of the identity
    for name, row in rows.items():
        assert row["label_hash"] == expected[name]
        meta = json.load(open(tmp_path / "runs" / row["run"] / "config.json"))
        assert meta["config"]["noise_features"] == name
    assert train_mnist.main(argv[:8] + ["--epochs", "1", "--rho", "0.4"]) == 0  # symmetric noise: no features
    (symmetric,) = [r for r in read_csv(tmp_path / "summary.csv") if r["noise"] == "symmetric"]
    assert symmetric["noise_features"] == ""


# ---------------------------------------------------------------------------------------------
# Human noise: CIFAR-N files.

def cifar_labels(cifar_dir, dataset="cifar10"):
    return data.load_dataset(dataset, cifar_dir)[1]


def write_human_file(path, clean, noisy_keys, legacy=False):
    """A CIFAR-N file as the project ships it: torch.save of a dict of numpy label arrays."""
    content = {"clean_label": clean.numpy().copy(), **{k: v.numpy().copy() for k, v in noisy_keys.items()}}
    buffer = io.BytesIO()
    torch.save(content, buffer, _use_new_zipfile_serialization=not legacy)
    raw = buffer.getvalue()
    if legacy:  # as numpy 1 names its arrays' constructor, which the 2022 files were saved with
        raw = raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
        assert b"numpy.core.multiarray" in raw
    with open(path, "wb") as f:
        f.write(raw)
    return hashlib.sha256(raw).hexdigest()


def flipped(labels, share, seed, k=10):
    g = torch.Generator().manual_seed(seed)
    flip = torch.rand(len(labels), generator=g) < share
    return torch.where(flip, (labels + torch.randint(1, k, labels.shape, generator=g)) % k, labels)


def cifar(cifar_dir, out, *extra):
    """train_cifar.py in-process, with the smallest run that reads the labels: the noise record (flip rate,
    transitions, label hash) is of the whole training set, the run trains on 2 of its samples."""
    return train_cifar.main(["--data-dir", cifar_dir, "--out", str(out), "--model", "resnet18", "--epochs", "1",
                             "--batch-size", "2", "--limit-train", "2", "--limit-test", "2", *extra])


def test_human_noise_run_trains_on_the_files_labels_and_records_the_file(cifar_dir, tmp_path):
    clean = cifar_labels(cifar_dir)
    keys = {"aggre_label": flipped(clean, 0.1, 1), "worse_label": flipped(clean, 0.4, 2)}
    path = tmp_path / "CIFAR-10_human.pt"
    sha = write_human_file(path, clean, keys, legacy=True)  # as the published files are (numpy 1's names)
    assert cifar(cifar_dir, tmp_path / "out", "--noise", "human", "--noise-file", str(path),
                 "--noise-key", "aggre_label") == 0
    (summary,) = read_csv(tmp_path / "out" / "summary.csv")
    assert summary["noise"] == "human" and summary["noise_key"] == "aggre_label" and summary["rho"] == ""
    assert float(summary["flip_rate"]) == pytest.approx((keys["aggre_label"] != clean).double().mean().item())
    assert summary["label_hash"] == data.label_hash(keys["aggre_label"])
    run = only_run_dir(tmp_path / "out")
    assert "aggre_label" in os.path.basename(run)
    meta = json.load(open(os.path.join(run, "config.json")))
    assert meta["noise_file"] == {"name": "CIFAR-10_human.pt", "sha256": sha}
    assert meta["config"]["noise_key"] == "aggre_label" and "noise_file" not in meta["config"]


def test_a_cifar_n_file_of_numpy_2_reads_as_one_of_numpy_1(cifar_dir, tmp_path):
    # the run above trains on a file with numpy 1's names; a file saved under numpy 2 is read the same way
    clean = cifar_labels(cifar_dir)
    keys = {"aggre_label": flipped(clean, 0.1, 1)}
    old, new = tmp_path / "old.pt", tmp_path / "new.pt"
    write_human_file(old, clean, keys, legacy=True)
    sha = write_human_file(new, clean, keys)
    read_old, read_new = (instance_noise.read_human_labels(str(p), "cifar10", "aggre_label") for p in (old, new))
    assert all(torch.equal(a, b) for a, b in zip(read_old[:2], read_new[:2]))
    assert torch.equal(read_new[0], clean) and torch.equal(read_new[1], keys["aggre_label"]) and read_new[2] == sha


def test_human_noise_default_file_and_key(cifar_dir, tmp_path):
    clean = cifar_labels(cifar_dir)
    worse = flipped(clean, 0.4, 2)
    os.symlink(os.path.join(cifar_dir, "cifar-10-batches-py"), tmp_path / "cifar-10-batches-py")
    write_human_file(tmp_path / "CIFAR-10_human.pt", clean, {"worse_label": worse})
    c = config.parse("train_cifar.py", ["--data-dir", str(tmp_path), "--noise", "human"])  # DATA_DIR/CIFAR-10_human.pt
    assert c.noise_file == os.path.join(str(tmp_path), "CIFAR-10_human.pt")
    assert c.settings()["noise_key"] == "worse_label"
    assert data.prepare(c, torch.device("cpu")).record["label_hash"] == data.label_hash(worse)  # the run's labels


def one_line_exit(capsys, code, *argv):
    with pytest.raises(SystemExit) as e:
        cifar(*argv)
    err = capsys.readouterr().err
    assert e.value.code == code and len(err.strip().splitlines()) == 1, err
    return err


def test_human_noise_refuses_a_file_of_other_labels(cifar_dir, tmp_path, capsys):
    clean = cifar_labels(cifar_dir)
    shuffled = clean.clone()
    first = int((clean != clean[0]).nonzero()[0])  # swapping 0 and `first` changes index 0 first
    shuffled[[0, first]] = shuffled[[first, 0]]
    path = tmp_path / "f.pt"
    write_human_file(path, shuffled, {"worse_label": shuffled})
    err = one_line_exit(capsys, 2, cifar_dir, tmp_path / "out", "--noise", "human", "--noise-file", str(path))
    assert str(path) in err and "first at index 0" in err and "wrong dataset or wrong order" in err
    write_human_file(path, clean[:100], {"worse_label": clean[:100]})
    err = one_line_exit(capsys, 2, cifar_dir, tmp_path / "out", "--noise", "human", "--noise-file", str(path))
    assert "holds 100 clean" in err
    assert not (tmp_path / "out" / "runs").exists()


@pytest.mark.parametrize("content,message", [
    ([1, 2, 3], "holds a list"), ({"clean_label": np.zeros(3)}, "has no worse_label"),
    ({"clean_label": np.zeros(250), "worse_label": np.zeros(250)}, "float64 values"),
    ({"clean_label": np.zeros(250, bool), "worse_label": np.zeros(250, bool)}, "torch.bool values"),
    ({"clean_label": np.zeros((125, 2), int), "worse_label": np.zeros((125, 2), int)}, "has shape (125, 2)"),
    (b"not a torch file", "not a CIFAR-N label file"), (b"", "not a CIFAR-N label file"),
    ({"clean_label": np.zeros(0, np.int64), "worse_label": np.zeros(0, np.int64)}, "holds 0 clean and 0 noisy"),
    ({"clean_label": np.zeros(250, np.uint64), "worse_label": np.full(250, 2 ** 64 - 1, np.uint64)},
     "worse_label holds 18446744073709551615 at index 0"),
])
def test_human_noise_malformed_files_are_one_line(cifar_dir, tmp_path, capsys, content, message):
    path = tmp_path / "f.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    err = one_line_exit(capsys, 2, cifar_dir, tmp_path / "out", "--noise", "human", "--noise-file", str(path))
    assert message in err and err.strip().isprintable()  # no terminal colour codes


class Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_human_noise_file_cannot_run_code(cifar_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "f.pt"
    with open(path, "wb") as f:
        pickle.dump({"clean_label": Evil()}, f, protocol=2)
    err = one_line_exit(capsys, 2, cifar_dir, tmp_path / "out", "--noise", "human", "--noise-file", str(path))
    assert "not a CIFAR-N label file" in err and not (tmp_path / "PWNED").exists()


def test_missing_human_file_says_where_to_get_it_and_where_to_put_it(cifar_dir, tmp_path, capsys):
    err = one_line_exit(capsys, 3, cifar_dir, tmp_path / "out", "--noise", "human", "--dataset", "cifar100")
    assert os.path.join(cifar_dir, "CIFAR-100_human.pt") in err and instance_noise.CIFAR_N in err
    assert "--noise-file" in err
    err = one_line_exit(capsys, 2, cifar_dir, tmp_path / "out", "--noise", "human", "--noise-file", str(tmp_path))
    assert "is a folder" in err


def test_another_label_file_is_another_run(cifar_dir, tmp_path):
    clean = cifar_labels(cifar_dir)
    first, second = tmp_path / "a.pt", tmp_path / "b.pt"
    write_human_file(first, clean, {"worse_label": flipped(clean, 0.4, 1)})
    write_human_file(second, clean, {"worse_label": flipped(clean, 0.4, 2)})
    for path in (first, second, first):  # the third is the first run again: already finished
        assert cifar(cifar_dir, tmp_path / "out", "--noise", "human", "--noise-file", str(path)) == 0
    rows = read_csv(tmp_path / "out" / "summary.csv")
    assert len(rows) == 2 and len({r["run"] for r in rows}) == 2 and len({r["label_hash"] for r in rows}) == 2
    assert {r["noise_file_sha256"] for r in rows} == {hashlib.sha256(p.read_bytes()).hexdigest() for p in (first, second)}


@pytest.mark.slow  # run_all.sh checks each input with a training script's process (--prepare-data): three here
def test_human_noise_grid_checks_every_label_set_before_any_cell(cifar_dir, tmp_path):
    def run_grid(out, label_file):
        return conftest.run_all("--human-noise", "--datasets", "cifar10", "--losses", "ce", "--trials", "1", "--out",
                                str(out), "--", "--data-dir", cifar_dir, "--model", "resnet18", "--epochs", "1",
                                "--noise-file", str(label_file), check=False)
    missing = run_grid(tmp_path / "skipped", tmp_path / "none.pt")
    assert "skipping cifar10:" in missing.stdout and instance_noise.CIFAR_N in missing.stdout
    assert "0 ran, 0 already finished, 3 skipped" in missing.stdout and "cell 1/3" not in missing.stdout
    clean = cifar_labels(cifar_dir)
    broken = clean.clone()
    broken[3] = 10
    path = tmp_path / "f.pt"  # aggre_label is fine; random_label1, the grid's second label set, is not
    write_human_file(path, clean, {"aggre_label": flipped(clean, 0.1, 1), "random_label1": broken,
                                   "worse_label": flipped(clean, 0.4, 2)})
    refused = run_grid(tmp_path / "out", path)
    assert refused.returncode == 2 and "cell 1/3" not in refused.stdout and not (tmp_path / "out").exists()
    assert "random_label1" in refused.stderr and "noisy label 10 at index 3" in refused.stderr


def test_a_label_file_that_changes_while_the_run_starts_is_refused(cifar_dir, tmp_path, monkeypatch, capsys):
    clean = cifar_labels(cifar_dir)
    path = tmp_path / "CIFAR-10_human.pt"
    named = write_human_file(path, clean, {"worse_label": flipped(clean, 0.4, 1)})
    prepare, replaced = data.prepare, []

    def replaced_meanwhile(*args, **kwargs):  # after the run was named from the file's hash, before it is read
        replaced.append(write_human_file(path, clean, {"worse_label": flipped(clean, 0.4, 2)}))
        return prepare(*args, **kwargs)
    monkeypatch.setattr(data, "prepare", replaced_meanwhile)
    err = one_line_exit(capsys, 2, cifar_dir, tmp_path / "out", "--noise", "human", "--noise-file", str(path))
    assert f"named for SHA-256 {named}" in err and f"now {replaced[0]}" in err and str(path) in err
    assert not (tmp_path / "out" / "summary.csv").exists()


def test_a_cifar_batch_label_int64_cannot_hold_is_named_as_it_is(tmp_path, capsys):
    root = tiny_data.make_cifar_dataset(str(tmp_path / "data"), "cifar10")
    path = os.path.join(root, "cifar-10-batches-py", "data_batch_2")
    with open(path, "rb") as f:
        batch = pickle.load(f)
    with open(path, "wb") as f:
        pickle.dump({**batch, "labels": np.full(len(batch["labels"]), 2 ** 64 - 1, np.uint64)}, f)
    with pytest.raises(data.DataError, match=f"{path}: labels holds 18446744073709551615 at index 0"):
        data.load_dataset("cifar10", root)


@pytest.mark.parametrize("flags,message", [
    (["--noise", "human", "--rho", "0.2"], "--rho 0.2 is not allowed with --noise human"),
    (["--noise", "human", "--noise-key", "noisy_label"], "--noise-key 'noisy_label' is not allowed"),
    (["--noise", "human", "--dataset", "cifar100", "--noise-key", "worse_label"], "noisy_label"),
    (["--noise-key", "worse_label"], "without --noise human"),
    (["--noise-file", "x.pt"], "without --noise human"),
    (["--noise", "human", "--noise-file", ""], "--noise-file '' is not allowed (empty)"),
    (["--noise", "human", "--noise-key", ""], "--noise-key '' is not allowed (empty)"),
    (["--noise", "instance", "--rho", "1"], "--rho 1.0"),
    (["--noise-features", "raw"], "--noise-features 'raw' is not allowed without --noise instance"),
    (["--noise", "human", "--noise-key", "clean"], "cifar10's CIFAR-N file has aggre_label"),
    (["--noise", "human", "--noise-key", "noisy100"], "--noise-key 'noisy100' is not allowed"),
    (["--loss", "ce", "--logit-clip", "0"], "logit_clip=0.0"), (["--logit-clip", "1e39"], "logit_clip=1e+39"),
])
def test_bad_noise_flags_are_one_line(cifar_dir, tmp_path, capsys, flags, message):
    assert message in one_line_exit(capsys, 2, cifar_dir, tmp_path / "out", *flags)


@pytest.mark.parametrize("dataset,name,key", [("cifar10", "aggre", "aggre_label"), ("cifar10", "worst", "worse_label"),
                                              ("cifar10", "rand1", "random_label1"), ("cifar10", "rand3", "random_label3"),
                                              ("cifar100", "noisy100", "noisy_label")])
def test_the_official_codes_cifar_n_names_are_the_files_keys(tmp_path, dataset, name, key):
    # UCSC-REAL/cifar-10-100n main.py names the label sets aggre, worst, rand1-3, noisy100
    argv = ["--dataset", dataset, "--noise", "human", "--data-dir", str(tmp_path)]
    by_name = config.parse("train_cifar.py", argv + ["--noise-key", name]).settings()
    by_key = config.parse("train_cifar.py", argv + ["--noise-key", key]).settings()
    assert by_name["noise_key"] == key and results.run_name(by_name) == results.run_name(by_key)  # the same run


def test_human_noise_is_not_a_choice_for_mnist(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        train_mnist.main(["--out", str(tmp_path), "--noise", "human"])
    assert e.value.code == 2 and "invalid choice: 'human'" in capsys.readouterr().err


def test_human_noise_grid(tmp_path, capsys):
    cells = grid.cells(datasets=("cifar10", "cifar100"), rhos=(), human=True)
    keys = {c.argv[c.argv.index("--noise-key") + 1] for c in cells}
    assert keys == {"aggre_label", "random_label1", "worse_label", "noisy_label"}
    assert len(cells) == 6 * 3 * 3 + 7 * 1 * 3  # report rows (7 on CIFAR-100) x keys x 3 trials
    assert all("--rho" not in c.argv and c.argv[c.argv.index("--noise") + 1] == "human" for c in cells)
    code, listed, _ = run_all_list(capsys, "--human-noise", "--list", "--out", str(tmp_path))
    assert code == 0 and "cifar10-phuber_ce-tau2-worse_label-seed2" in listed
    assert "cifar100-ce-noisy_label-seed0" in listed
    code, _, err = run_all_list(capsys, "--human-noise", "--rhos", "0.2", "--list", "--out", str(tmp_path))
    assert code == 2 and "--human-noise takes no --rhos" in err


# ---------------------------------------------------------------------------------------------
# LogitClip as a training flag and a grid option.

def test_logit_clip_run_and_grid(mnist_dir, tmp_path, capsys):
    assert train_mnist.main(["--data-dir", mnist_dir, "--out", str(tmp_path), "--epochs", "1", "--limit-train", "64",
                             "--limit-test", "64", "--logit-clip", "1"]) == 0
    (summary,) = read_csv(tmp_path / "summary.csv")
    assert float(summary["logit_clip"]) == 1.0 and summary["loss"] == "ce"
    assert "logit_clip1" in os.path.basename(only_run_dir(tmp_path))
    cells = grid.cells(datasets=("mnist",), losses=["ce", "phuber_ce"], rhos=(0.6,), trials=1, logit_clip=1.0)
    assert [c.id for c in cells] == ["mnist-ce+lc1-rho0.6-seed0", "mnist-phuber_ce+lc1-tau10-rho0.6-seed0"]
    assert all(c.argv[c.argv.index("--logit-clip") + 1] == "1" for c in cells)
    code, listed, _ = run_all_list(capsys, "--datasets", "mnist", "--losses", "ce", "--logit-clip", "1", "--list")
    assert code == 0 and "mnist-ce+lc1-rho0-seed0" in listed
    for bad in ("0", "x", "1,2"):
        code, _, err = run_all_list(capsys, "--losses", "ce", "--logit-clip", bad, "--list")
        assert code == 2 and "--logit-clip" in err


def test_run_names_without_logit_clip_are_unchanged():
    config = dict(dataset="mnist", model="lenet", loss="ce", tau=None, q=None, alpha=None, beta=None, logit_clip=None,
                  clip_norm=None, clip_mode="global", noise="symmetric", rho=0.4, noise_seed=0, seed=0)
    assert results.run_name(config) == results.run_name({k: v for k, v in config.items() if k != "logit_clip"})


def test_aggregate_lays_out_human_noise_by_key(tmp_path, capsys):
    rows = [conftest.summary_row("cifar10", "ce", "", seed, acc, run=f"h-{key}-{seed}", noise="human", noise_key=key)
            for key, accs in (("aggre_label", (80.0, 82.0, 84.0)), ("worse_label", (60.0, 61.0, 62.0)))
            for seed, acc in enumerate(accs)]
    rows += [conftest.summary_row("cifar10", "ce", 0.4, seed, 70.0) for seed in range(3)]
    conftest.write_csv_rows(tmp_path / "summary.csv", rows)
    assert aggregate.main(["--results", str(tmp_path), "--no-plot"]) == 0
    human = (tmp_path / "tables" / "cifar10_human.md").read_text()
    assert "| Loss | aggre_label | worse_label |" in human
    assert "| CE | **82.0 ± 1.2** | **61.0 ± 0.6** |" in human
    main = (tmp_path / "tables" / "cifar10.md").read_text()
    assert "ρ = 0.4" in main and "aggre_label" not in main and "82.0" not in main
    assert "skipping" not in capsys.readouterr().err
