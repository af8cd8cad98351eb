"""Tests for gpu_check.py (make gpu-check) on a machine without a GPU: the one line without CUDA, the
orchestration of its parts (a failing or overlong part is recorded, the others still run, the exit
status says so), SIGTERM, and the self-check on the CPU (--device cpu) with its report's fields. None
of this checks a GPU path: the CUDA tier (test_cuda.py) does, on a GPU."""
import json
import math
import os
import shutil
import signal
import subprocess
import sys

import pytest

import conftest
import gpu_check
from test_reliability import processes_mentioning, wait_for, with_marker

NO_GPU = {"CUDA_VISIBLE_DEVICES": ""}  # hides every GPU from the driver: the same answer on a GPU machine


def gpu_check_process(args, env, **kwargs):
    return subprocess.Popen([sys.executable, "gpu_check.py", *args], cwd=conftest.ROOT, env=dict(os.environ, **env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def test_without_cuda_it_is_one_line(tmp_path):
    # a process: the driver is asked in it, with every GPU hidden (this one may have asked it already)
    proc = gpu_check_process([], dict(NO_GPU, OUT=str(tmp_path / "out")))
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0 and len(output.strip().splitlines()) == 1 and "gpu-check: no CUDA device here" in output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args,message", [
    (["--minutes", "0"], "--minutes 0.0 is not allowed"), (["--minutes", "nan"], "--minutes nan is not allowed"),
    (["--device", "gpu"], "invalid choice: 'gpu'"),
])
def test_bad_flags_are_one_line(args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    with pytest.raises(SystemExit) as e:
        gpu_check.main(args)
    output = capsys.readouterr()
    assert e.value.code == 2 and output.out == "" and len(output.err.strip().splitlines()) == 1 and message in output.err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not shutil.which("make"), reason="no make here")
def test_make_gpu_check_uses_the_python_it_is_given(tmp_path):
    result = subprocess.run(["make", "-s", "gpu-check", f"PYTHON={sys.executable}"], cwd=conftest.ROOT,
                            capture_output=True, text=True, env=dict(os.environ, OUT=str(tmp_path), **NO_GPU))
    assert result.returncode == 0 and result.stdout.startswith("gpu-check: no CUDA device here") and not result.stderr


def test_a_failing_part_is_recorded_and_the_others_still_run(tmp_path, monkeypatch):
    # gpu_check's own orchestration with stand-in parts: what each reports, and what it makes of that
    python = lambda code: lambda seconds: [sys.executable, "-c", code]  # noqa: E731
    sleeper = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', " \
              f"{str(tmp_path)!r}]); print('started', flush=True); time.sleep(60)"
    monkeypatch.setattr(gpu_check, "plan", lambda cuda, data, scratch: [
        ("tier", python("print('===== 59 skipped in 3.4s =====')"), 60, r"\d+ (passed|skipped)"),  # torch sees no GPU
        ("grid", python("print('summary: 1 ran, 1 failed'); raise SystemExit(3)"), 60, r"^summary:"),
        ("slow", python(sleeper), 2, "started"),  # its process group is stopped when its 2 s are up ...
        ("benchmark", python("print('lenet 1 at a time: measured')"), 60, ": measured"),
    ])
    out = tmp_path / "out"
    assert gpu_check.check(False, 1, str(out), str(tmp_path / "scratch")) == 1
    assert not processes_mentioning(str(tmp_path))  # ... with the process it started
    report = json.loads((out / "gpu-check.json").read_text())
    assert {name: p["status"] for name, p in report["parts"].items()} == {
        "tier": "failed: no test ran", "grid": "failed (exit 3)", "slow": "ran out of time", "benchmark": "passed"}
    assert report["parts"]["grid"]["summary"] == "summary: 1 ran, 1 failed" and report["parts"]["slow"]["seconds"] < 30
    assert (out / report["parts"]["benchmark"]["log"]).read_text() == "lenet 1 at a time: measured\n"
    assert report["cuda"] is False and "nothing here ran on a GPU" in report["what"] and report["benchmark"] == {}
    markdown = (out / "gpu-check.md").read_text()
    assert "nothing here ran on a GPU" in markdown and "| grid | failed (exit 3) |" in markdown
    assert "| benchmark | passed |" in markdown and not list(out.glob(conftest.TEMPORARY))


def test_sigterm_stops_every_part_and_leaves_the_report_of_those_that_ended(tmp_path):
    marker, out = str(tmp_path), tmp_path / "out"
    out.mkdir()
    (out / "gpu-check.md").write_text("| tier | passed |\n| grid | passed |\n")  # an earlier check's: stale now
    proc = gpu_check_process(["--device", "cpu"], dict(OUT=str(out), TMPDIR=str(tmp_path), MARKER=marker))
    wait_for(lambda: (out / "gpu-check.json").exists(), seconds=120, proc=proc)  # the first part has ended ...
    wait_for(lambda: len(with_marker(marker)) > 1, seconds=60, proc=proc)  # ... and the second runs
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130 and "gpu-check: interrupted" in proc.stdout.read()
    wait_for(lambda: not with_marker(marker), seconds=30)
    assert not list(tmp_path.glob("gpu-check-*"))  # its scratch folder is gone
    report = json.loads((out / "gpu-check.json").read_text())
    assert report["state"] == "interrupted after 1 of 3 parts" and list(report["parts"]) == ["tier"]
    assert "**Not finished: interrupted after 1 of 3 parts.**" in (out / "gpu-check.md").read_text()


@pytest.mark.slow
def test_the_self_check_on_the_cpu(tmp_path):
    # the three real parts at toy sizes on the CPU: a check of gpu_check.py's commands and report
    marker, out = str(tmp_path), tmp_path / "out"
    proc = gpu_check_process(["--device", "cpu"], dict(OUT=str(out), TMPDIR=str(tmp_path), MARKER=marker))
    output = proc.communicate(timeout=1800)[0]
    assert proc.returncode == 0, output
    assert output.splitlines()[-1].startswith("gpu-check: every part passed") and len(output.splitlines()) == 4
    report = json.loads((out / "gpu-check.json").read_text())
    assert report["cuda"] is False and "nothing here ran on a GPU" in report["what"]
    tier, grid, bench = (report["parts"][name] for name in ("tier", "grid", "benchmark"))
    assert {p["status"] for p in (tier, grid, bench)} == {"passed"}
    assert " passed" in tier["summary"] and "skipped" not in tier["summary"]
    assert grid["summary"].startswith("summary: 2 ran, 0 already finished")
    assert sorted(os.listdir(out / "logs" / "grid")) == ["mnist-ce-rho0.6-seed0.log", "mnist-linear-rho0.6-seed0.log"]
    b = report["benchmark"]
    assert b["device"] == "cpu" and b["failed"] == b["skipped"] == []
    lenet, (resnet,) = b["lenet"], b["resnet50"]["configs"]
    assert (lenet["runs"], lenet["epochs"], b["resnet50"]["epochs"], b["resnet50"]["batch"]) == (72, 20, 200, 2)
    waves = [k for k in (1, 2, 4, 8, 12, 16) if k <= os.cpu_count()]  # K at a time: a core each
    assert [w["k"] for w in lenet["waves"]] == waves and lenet["startup_s"] > 0
    assert bench["summary"] == f"{len(waves) + 1} measured, 0 failed, 0 skipped"
    assert (resnet["amp"], resnet["channels_last"], resnet["compile"]) == ("fp16", True, False)
    for wave in lenet["waves"]:  # 20 epochs in waves of K, each after a run's start-up
        assert wave["table1_minutes"] == pytest.approx(math.ceil(72 / wave["k"]) * (lenet["startup_s"] + 20 * wave["epoch_s"]) / 60)
    # a run checkpoints every 25 epochs (train_cifar.py's --checkpoint-every): 8 of the epoch's checkpoints
    assert resnet["checkpoint_s"] > 0 and resnet["epoch_s"] == pytest.approx(resnet["epoch_without_checkpoint_s"]
                                                                               + resnet["checkpoint_s"])
    assert resnet["run_minutes"] == pytest.approx((200 * resnet["epoch_without_checkpoint_s"]
                                                   + 8 * resnet["checkpoint_s"]) / 60)
    assert b["mps"] is False and "CUDA MPS not running" in (out / "gpu-check.md").read_text()
    markdown = (out / "gpu-check.md").read_text()
    assert "nothing here ran on a GPU" in markdown and "## CIFAR-100 ResNet-50" in markdown
    assert "| tier | passed |" in markdown and "| grid | passed |" in markdown
    assert not with_marker(marker) and not list(tmp_path.glob("gpu-check-*"))  # no process, no scratch left
