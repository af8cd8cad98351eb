"""Whether the GPU paths work here and how fast they are, in one command of at most 8 minutes (issue 22).

    make gpu-check PYTHON=python3          (the same: python3 gpu_check.py)

On a CUDA machine, with the interpreter as it is (nothing installed, no internet: the data are generated),
in turn: the CUDA test tier (pytest -m cuda), a --quick grid of MNIST and CIFAR-100 in fp16, and the
benchmark in the time left (bench.py --grid-estimate). The report (gpu-check.json, gpu-check.md, logs/)
goes to $OUT if set, else to results/gpu-check/; docs/speed.md says how to read it. Exit status 0 when
every part passed, 1 when one failed or ran out of time, 2 for an unwritable output folder. Without CUDA
it says so in one line and exits 0 at once, before torch is imported.
"""
import argparse
import ctypes
import datetime
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import catalog
import results
from errors import Failure, Parser, edge

HERE = os.path.dirname(os.path.abspath(__file__))
TIER_S, GRID_S, REPORT_S = 240, 120, 20  # the most the first two parts take; to stop the last and report
BENCH_JSON = "benchmark.json"
WHAT = {True: "The GPU check on CUDA",
        False: "A self-check of gpu_check.py on the CPU at toy sizes (--device cpu): nothing here ran on a GPU"}


def cuda_devices():
    """How many CUDA devices the driver shows this process (0 without a driver), asked without torch."""
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    return count.value if driver.cuInit(0) == 0 and driver.cuDeviceGetCount(ctypes.byref(count)) == 0 else 0


def run_part(cmd, seconds, log, env):
    """Run cmd (its output to `log`) for at most `seconds`, in a process group of its own, which a
    timeout, Ctrl-C or SIGTERM stops whole. Returns its exit status, or None when it ran out of time."""
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=HERE, env=env, start_new_session=True)
        try:
            return proc.wait(timeout=max(seconds, 1))
        except subprocess.TimeoutExpired:
            return None
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
            # the whole group, a grid's cells too: they write into the scratch folder until they end
            deadline = time.monotonic() + 15
            while group_alive(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if group_alive(proc.pid):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def group_alive(pgid):
    """Whether a live process (not a zombie: not every container's init reaps) is in process group `pgid`."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                state, _, group = f.read().rsplit(")", 1)[1].split()[:3]
        except OSError:
            continue
        if state != "Z" and int(group) == pgid:
            return True
    return False


def last_match(log, pattern):
    with open(log, errors="replace") as f:
        found = [line.strip() for line in f if re.search(pattern, line)]
    return found[-1] if found else "(no summary line: see the log)"


def plan(cuda, data, scratch):
    """The three parts, in order: (name, command for the seconds it is given, the most seconds it may
    take, a regular expression for its summary line); the self-check's (not cuda) at toy sizes."""
    # the tier's file only (collecting every module would import them all), a test per line (a log cut short
    # shows where), the durations to size the next check; the self-check: a few quick tests
    tests = [] if cuda else ["-k", "every_loss and float32 or waits_for_the_device and flags1"]
    tier = [sys.executable, "-m", "pytest", "-m", "cuda", "-v", "-rfE", "--durations=15", "-p", "no:cacheprovider",
            "test_cuda.py", *tests]
    # the benchmark's datasets; the self-check: MNIST, two losses (ResNet-50 in fp16 takes many minutes on a CPU)
    lenet, resnet = catalog.BENCH["lenet"], catalog.BENCH["resnet50"]
    cells = ["--datasets", f"{lenet},{resnet}", "--losses", "ce,phuber_gce", "--trials", "2"] if cuda else \
        ["--datasets", lenet, "--losses", "ce,linear"]
    grid = ["bash", os.path.join(HERE, "run_all.sh"), "--quick", *cells, "--rhos", "0.6", "--gpus", "0", "--per-gpu",
            str(min(4, os.cpu_count() or 1)), "--out", os.path.join(scratch, "quick"), "--", "--data-dir", data,
            "--amp", "fp16", *([] if cuda else ["--device", "cpu"])]
    # the self-check: the LeNet measurements and the first ResNet-50 setting (fp16 at batch 2: 30 s a step)
    sizes = [] if cuda else ["--limit", "256", "--resnet-steps", "1", "--warmup", "1", "--test-images", "4",
                             "--resnet-configs", "1"]

    def bench(seconds):  # 30 s: its start
        return [sys.executable, os.path.join(HERE, "bench.py"), "--grid-estimate", os.path.join(scratch, BENCH_JSON),
                "--device", "cuda" if cuda else "cpu", "--data-dir", data, "--budget", f"{max(seconds - 30, 1):.0f}",
                *sizes]
    return [("tier", lambda seconds: tier, TIER_S if cuda else math.inf, r"\d+ (passed|failed|error)"),
            ("grid", lambda seconds: grid, GRID_S if cuda else math.inf, r"^summary:|FAILED|error"),
            ("benchmark", bench, math.inf, r": (measured|FAILED)")]


@edge()
def main(argv=None):
    p = Parser(prog="gpu_check.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                   help="cpu: a self-check of this script at toy sizes on the CPU (test_gpu_check.py), never of a "
                   "GPU path, and its report says so (default: %(default)s)")
    p.add_argument("--minutes", type=float, help="time for all three parts (default: 8 on cuda, 40 on cpu)")
    args = p.parse_args(argv)
    minutes = (8 if args.device == "cuda" else 40) if args.minutes is None else args.minutes
    if not 0 < minutes < math.inf:
        p.error(f"--minutes {minutes} is not allowed: a number of minutes > 0")
    if args.device == "cuda" and not cuda_devices():
        print("gpu-check: no CUDA device here (no NVIDIA driver, or none visible): nothing to check")
        return 0
    out = os.path.abspath(os.environ.get("OUT") or os.path.join("results", "gpu-check"))
    try:
        results.check_writable(out, "gpu-check.json")
    except ValueError as e:
        raise Failure(f"$OUT or results/gpu-check: {e}") from None
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stops the part running, as Ctrl-C does
    scratch = tempfile.mkdtemp(prefix="gpu-check-")
    try:
        return check(args.device == "cuda", minutes, out, scratch)
    except KeyboardInterrupt:
        print("gpu-check: interrupted", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def check(cuda, minutes, out, scratch):
    """plan()'s parts within `minutes`, each whatever the others did, reported into `out` as each ends (an
    interruption leaves the report of those that ended, marked so): 0 if all passed, else 1."""
    start = time.monotonic()
    deadline, logs, data = start + 60 * minutes, os.path.join(out, "logs"), os.path.join(scratch, "data")
    os.makedirs(logs, exist_ok=True)
    import tiny_data  # numpy: only now, past the check for CUDA
    if cuda:  # in the real formats, from the tests' generators: patterned images that a network learns
        tiny_data.make_idx_dataset(data, n_train=60000, n_test=10000)  # MNIST-sized
        tiny_data.make_cifar_dataset(data, catalog.BENCH["resnet50"], n_train=300, n_test=100)
    else:
        tiny_data.make_idx_dataset(data)
    # the grid's --gpus 0: the first visible GPU, without run_all.sh's probe (a torch import)
    env = dict(os.environ, PYTHON=sys.executable, CUDA_VISIBLE_DEVICES=os.environ.get("CUDA_VISIBLE_DEVICES", "0"))
    if not cuda:  # one "GPU" whose cells run on the CPU, as the CPU tests run --gpus
        env.update(CUDA_TIER_DEVICE="cpu", CUDA_VISIBLE_DEVICES="0")
    parts, steps = {}, plan(cuda, data, scratch)

    def write(state):
        report(dict(when=datetime.datetime.now().isoformat(timespec="seconds"), minutes=minutes, cuda=cuda,
                    what=WHAT[cuda], state=state, parts=parts), out, scratch)
    try:
        for i, (name, command, most, summary) in enumerate(steps):
            t0 = time.monotonic()
            seconds, log = min(most, deadline - t0 - REPORT_S), os.path.join(logs, f"{name}.log")
            code = run_part(command(seconds), seconds, log, env)
            status = "passed" if code == 0 else "ran out of time" if code is None else f"failed (exit {code})"
            part = parts[name] = dict(status=status, seconds=round(time.monotonic() - t0, 1),
                                      summary=last_match(log, summary), log=os.path.relpath(log, out))
            if name == "tier" and status == "passed" and " passed" not in part["summary"]:
                part["status"] = "failed: no test ran"  # every test skipped: this torch does not see the GPU
            print(f"gpu-check: {name}: {part['status']} in {part['seconds']:.0f} s; {part['summary']}", flush=True)
            write("finished" if i == len(steps) - 1 else f"{i + 1} of {len(steps)} parts ended")
    except KeyboardInterrupt:
        write(f"interrupted after {len(parts)} of {len(steps)} parts")
        raise
    passed = all(p["status"] == "passed" for p in parts.values())
    print(f"gpu-check: {'every part passed' if passed else 'NOT every part passed'} in "
          f"{time.monotonic() - start:.0f} s; {os.path.join(out, 'gpu-check.md')}")
    return 0 if passed else 1


def report(found, out, scratch):
    """gpu-check.json and gpu-check.md of `found` (the parts that ended), with the grid's cell logs and
    what the benchmark measured so far (it writes its JSON after each measurement)."""
    quick, bench_json = os.path.join(scratch, "quick", "logs"), os.path.join(scratch, BENCH_JSON)
    if os.path.isdir(quick):  # each cell's log, not its results (checkpoints: 190 MB each)
        shutil.copytree(quick, os.path.join(out, "logs", "grid"), dirs_exist_ok=True)
    found["benchmark"] = {}
    if os.path.exists(bench_json):
        with open(bench_json) as f:
            bench = found["benchmark"] = json.load(f)
    if "benchmark" in found["parts"] and found["benchmark"]:
        found["parts"]["benchmark"]["summary"] = (
            f"{len(bench['lenet']['waves']) + len(bench['resnet50']['configs'])} measured, "
            f"{len(bench['failed'])} failed, {len(bench['skipped'])} skipped")
    results.write_atomic(os.path.join(out, "gpu-check.json"), lambda f: json.dump(found, f, indent=1))
    results.write_atomic(os.path.join(out, "gpu-check.md"), lambda f: f.write(markdown(found)))


def scaled(test, train=None):
    """Where the self-check measured on fewer images than a run has: how many."""
    return "" if test == 10000 and train in (None, 60000) else \
        f"; measured on {f'{train} training and ' if train else ''}{test} test images, scaled"


def markdown(report):
    """gpu-check.md: the parts, then the benchmark's tables (docs/speed.md explains them)."""
    b = report["benchmark"]
    lines = [f"# make gpu-check, {report['when']}: {b.get('device', '?')}, torch {b.get('torch', '?')} "
             f"(CUDA {b.get('cuda')}), {b.get('cores', '?')} CPU cores", "",
             *([] if report["cuda"] else [f"**{report['what']}.**", ""]),
             *([] if report["state"] == "finished" else [f"**Not finished: {report['state']}.**", ""]),
             "| part | status | seconds | summary |", "|---|---|---|---|",
             *(f"| {name} | {p['status']} | {p['seconds']:.0f} | {p['summary']} |"
               for name, p in report["parts"].items())]
    lenet, resnet = b.get("lenet"), b.get("resnet50")
    if lenet:
        startup = "not measured" if lenet["startup_s"] is None else f"{lenet['startup_s']:.1f} s"
        lines += ["", f"## MNIST Table 1: {lenet['runs']} LeNet runs of {lenet['epochs']} epochs", "",
                  f"One epoch as a run does it (60,000 training images at batch {lenet['batch']}, the 10,000 test "
                  f"images evaluated, a checkpoint{scaled(lenet['test_images'], lenet['images'])}), K runs at a "
                  f"time in K processes (CUDA MPS {'running' if b.get('mps') else 'not running'}: docs/speed.md); a "
                  f"run's start-up: {startup}. Implied Table 1 = ceil(runs / K) x (start-up "
                  "+ epochs x epoch). Goal: under 10 minutes on one H100/H200-class GPU; the report: about 2 hours "
                  "on an RTX 2080 Ti.", "",
                  "| runs at a time (--per-gpu K) | epoch (s) | implied Table 1 (min) |", "|---|---|---|"]
        lines += [f"| {w['k']} | {w['epoch_s']:.2f} | {w['table1_minutes']:.1f} |" for w in lenet["waves"]]
    if resnet:
        lines += ["", f"## CIFAR-100 ResNet-50: one run of {resnet['epochs']} epochs", "",
                  f"{resnet['steps']} training steps at batch {resnet['batch']} timed after untimed ones, scaled to "
                  f"an epoch's {resnet['steps_per_epoch']}, plus one evaluation of the 10,000 test images and a "
                  f"checkpoint{scaled(resnet['test_images'])}. Goal: under 15 minutes; the report: about 4 hours in "
                  "float32 on an RTX 2080 Ti.", "",
                  "| precision | channels-last | compile | ms/step | images/s | epoch (s) | of which checkpoint (s) "
                  "| implied run (min) |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {c['amp']} | {'yes' if c['channels_last'] else 'no'} | {'yes' if c['compile'] else 'no'} | "
                  f"{c['step_ms']:.1f} | {c['images_per_s']:,.0f} | {c['epoch_s']:.1f} | {c['checkpoint_s']:.2f} | "
                  f"{c['run_minutes']:.1f} |" for c in resnet["configs"]]
    for key in ("skipped", "failed"):
        lines += ["", f"{key.capitalize()}: " + "; ".join(b[key])] if b.get(key) else []
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
