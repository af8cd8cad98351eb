"""Golden outputs: fixed-seed runs of every script, compared with the files recorded in golden/.

Runs tiny but complete versions of train_mnist.py, train_cifar.py (--model resnet18), both synthetic
scripts and aggregate.py on generated data, and compares every file they write with golden/. The
files were first recorded before the restructure of issue 10, so this test shows that the
restructure changed no number, no run name and no column. After an intended change of outputs:

    python test_golden.py --write        # rewrite golden/ (then review `git diff golden/`)

What is not compared: wall-clock and version columns (they change from run to run; code is the
git commit), and the
shortest decimal form of accuracies (issue 10 point 9 computes them from integer counts, so
88.99000000000001 became 88.99; their values must agree to 1e-12). Training numbers are compared
exactly only on the platform that recorded them (same torch, numpy, scipy and CPU model): another
CPU's vector kernels round float32 sums differently. Elsewhere everything that does not depend on
float kernels (file set, columns, run names and hashes, noise records, sizes, settings) is still
compared exactly, and the numbers are reported as not compared.
"""
import csv
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import warnings

import pytest

import conftest

GOLDEN = os.path.join(conftest.ROOT, "golden")
IGNORED = {"wall_seconds", "epoch_seconds", "images_per_second", "finished", "started", "python", "torch",
           "torchvision", "numpy", "scipy", "device_name", "code"}
ACCURACY = {"test_acc", "val_acc", "val_clean_acc", "mean", "se", "ours", "ours_se", "ours_minus_reproduction",
            "ours_minus_original", "mean_diff", "ci_low", "ci_high"}
MNIST_RUNS = [
    ["--loss", "ce", "--rho", "0.4", "--seed", "0"], ["--loss", "ce", "--rho", "0.4", "--seed", "1"],
    ["--loss", "phuber_ce", "--rho", "0.4", "--seed", "0"], ["--loss", "phuber_ce", "--rho", "0.4", "--seed", "1"],
    ["--loss", "ce", "--rho", "0", "--seed", "0"],
    ["--loss", "ce", "--rho", "0.4", "--clip-norm", "0.5", "--clip-mode", "per-example"],
    ["--loss", "gce", "--rho", "0.4", "--val-split", "0.2", "--noise", "asymmetric"],
]
CIFAR_RUN = ["--dataset", "cifar10", "--model", "resnet18", "--epochs", "1", "--batch-size", "50", "--loss",
             "phuber_ce", "--tau", "2", "--rho", "0.2"]


def environment():
    cpu = ""
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    versions = subprocess.run([sys.executable, "-c", "import torch, numpy, scipy; print(torch.__version__, "
                               "numpy.__version__, scipy.__version__)"], capture_output=True, text=True,
                              check=True).stdout.split()
    return dict(zip(("torch", "numpy", "scipy"), versions), cpu=cpu or platform.machine())


def produce(out, data):
    """Run every script with fixed seeds into `out`; tiny data is generated into `data`."""
    mnist, cifar = os.path.join(data, "mnist"), os.path.join(data, "cifar")
    conftest.make_idx_dataset(mnist)
    conftest.make_cifar_dataset(cifar, "cifar10", n_train=100, n_test=50)
    # two threads, as where the files were recorded: float32 sums depend on how the work is split
    env = dict(os.environ, OMP_NUM_THREADS="2", MKL_NUM_THREADS="2")
    run = lambda *argv: subprocess.run([sys.executable, *argv], cwd=conftest.ROOT, check=True, env=env,  # noqa: E731
                                       capture_output=True, text=True)
    for flags in MNIST_RUNS:
        run("train_mnist.py", "--data-dir", mnist, "--out", out, "--epochs", "2", *flags)
    run("train_cifar.py", "--data-dir", cifar, "--out", out, *CIFAR_RUN)
    synthetic = os.path.join(out, "synthetic")
    run("synthetic_long_servedio.py", "--rho", "0.45", "0.2", "--trials", "4", "--workers", "1", "--no-plot",
        "--out", synthetic)
    run("synthetic_ding.py", "--theta-step", "0.05", "--no-plot", "--out", synthetic)
    run("aggregate.py", "--results", out, "--no-plot")


def outputs(out):
    """{relative path: file text} of every result file (no checkpoints, locks, logs or figures)."""
    found = {}
    for folder, _, files in os.walk(out):
        for name in files:
            if name.endswith((".csv", ".md", ".tex", ".json")):
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as f:
                    found[os.path.relpath(path, out).replace(os.sep, "/")] = f.read()
    return found


def normalise(text, out, data):
    return text.replace(os.path.abspath(data), "DATA").replace(os.path.abspath(out), "OUT")


def differences(name, golden, ours, numbers):
    """Lines describing how file `name` differs (nothing when it matches)."""
    if name.endswith(".csv"):
        a, b = list(csv.reader(io.StringIO(golden))), list(csv.reader(io.StringIO(ours)))
        if not a or not b or a[0] != b[0] or len(a) != len(b):
            return [f"{name}: header or row count differs ({a[:1]} vs {b[:1]}, {len(a)} vs {len(b)} rows)"]
        found = []
        for line, (row_a, row_b) in enumerate(zip(a[1:], b[1:]), start=2):
            for column, x, y in zip(a[0], row_a, row_b):
                if x == y or column in IGNORED or (not numbers and is_number(x) and is_number(y)):
                    continue
                if column in ACCURACY and is_number(x) and is_number(y) and abs(float(x) - float(y)) <= 1e-12 * max(
                        1.0, abs(float(x))):
                    continue
                found.append(f"{name} line {line} column {column}: {x!r} recorded, {y!r} now")
        return found
    if name.endswith(".json"):
        a, b = json.loads(golden), json.loads(ours)
        for meta in (a, b):
            for key in IGNORED | {"versions"}:
                meta.pop(key, None)
        return [] if a == b else [f"{name}: {a} recorded, {b} now"]
    if golden != ours and numbers:
        return [f"{name}: text differs"]
    return []


def is_number(text):
    try:
        float(text)
        return True
    except ValueError:
        return False


@pytest.mark.slow
def test_outputs_equal_the_recorded_ones(tmp_path):
    out, data = str(tmp_path / "out"), str(tmp_path / "data")
    produce(out, data)
    with open(os.path.join(GOLDEN, "environment.json")) as f:
        recorded = json.load(f)
    numbers = recorded == environment()
    golden = {k: v for k, v in outputs(GOLDEN).items() if k != "environment.json"}
    ours = {k: normalise(v, out, data) for k, v in outputs(out).items()}
    assert sorted(ours) == sorted(golden), "the set of result files differs"
    problems = [line for name in sorted(golden) for line in differences(name, golden[name], ours[name], numbers)]
    assert not problems, "\n".join(problems[:30])
    if not numbers:
        warnings.warn(f"golden numbers not compared: recorded on {recorded}, this is {environment()}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python test_golden.py --write   (rewrites golden/ from the current code)")
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        out, data = os.path.join(tmp, "out"), os.path.join(tmp, "data")
        produce(out, data)
        shutil.rmtree(GOLDEN, ignore_errors=True)
        for name, text in outputs(out).items():
            os.makedirs(os.path.dirname(os.path.join(GOLDEN, name)), exist_ok=True)
            with open(os.path.join(GOLDEN, name), "w", encoding="utf-8") as f:
                f.write(normalise(text, out, data))
    with open(os.path.join(GOLDEN, "environment.json"), "w") as f:
        json.dump(environment(), f, indent=1)
    print(f"wrote {GOLDEN}")
