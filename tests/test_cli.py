"""The ``smallmed`` command: thin shells over the Python API, one-sentence errors, exit codes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from smallmed.cli import main
from tests.conftest import make_medmnist

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def _train_args(data, out, *extra):
    return ["train", "--data", str(data), "--model", "small_cnn", "--epochs", "2", "--batch-size", "16",
            "--augment", "none", "--no-progress", "--out", str(out), *extra]


def test_train_evaluate_predict(tiny_npz, tmp_path, capsys):
    assert main(["-q", *_train_args(tiny_npz, tmp_path / "r")]) == 0
    assert "test auc" in capsys.readouterr().out
    assert main(["evaluate", str(tmp_path / "r"), "--device", "cpu"]) == 0
    ev = json.loads(capsys.readouterr().out)
    saved = json.loads((tmp_path / "r" / "metrics.json").read_text())["test"]
    assert ev["auc"] == pytest.approx(saved["auc"]) and ev["acc"] == pytest.approx(saved["acc"])
    imgs = np.load(tiny_npz)["test_images"][:3]
    paths = []
    for i, im in enumerate(imgs):
        Image.fromarray(im).save(tmp_path / f"x{i}.png")
        paths.append(str(tmp_path / f"x{i}.png"))
    assert main(["predict", str(tmp_path / "r"), *paths, "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "path,pred,p_0,p_1" and len(lines) == 4


def test_config_file_flags_and_set(tiny_npz, tmp_path):
    (tmp_path / "run.yaml").write_text(f"data: {tiny_npz}\nmodel: small_cnn\nepochs: 3\nlr: 0.01\n")
    args = ["-q", "train", "--config", str(tmp_path / "run.yaml"), "--epochs", "1", "--no-progress",
            "--augment", "none", "--out", str(tmp_path / "r"), "--set", "lr=0.002", "betas=[0.9,0.99]"]
    assert main(args) == 0
    import yaml

    cfg = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert cfg["epochs"] == 1 and cfg["lr"] == 0.002 and cfg["betas"] == [0.9, 0.99] and cfg["model"] == "small_cnn"


@pytest.mark.parametrize("argv, message", [
    (["train", "--data", "/nonexistent/x.npz"], "x.npz' not found"),
    (["train", "--data", "DATA", "--model", "resnt18"], "Did you mean 'resnet18'"),
    (["train", "--data", "DATA", "--fraction", "0"], "fraction=0.0"),
    (["train", "--data", "DATA", "--set", "lrr=1"], "Did you mean 'lr'"),
    (["train", "--resume", "/nonexistent/run"], "not a smallmed run folder"),
    (["evaluate", "/nonexistent/run"], "run folder not found"),
    (["data", "stats", "nosuchdata"], "not found; looked at"),
    (["data", "fetch", "cifar10"], "known MedMNIST names"),
])
def test_errors_are_one_sentence_and_exit_2(argv, message, tiny_npz, tmp_path, capsys):
    argv = [str(tiny_npz) if a == "DATA" else a for a in argv]
    if argv[0] == "train" and "--resume" not in argv:
        argv += ["--out", str(tmp_path / "r")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_data_stats_and_models_and_env(tiny_npz, capsys):
    assert main(["data", "stats", str(tiny_npz), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["splits"]["test"]["n"] == 24 and "kurtosis" in st["splits"]["train"]
    assert main(["models"]) == 0
    assert "efficientnet_lite0" in capsys.readouterr().out
    assert main(["env"]) == 0
    assert "torch" in capsys.readouterr().out


def test_mismatched_checkpoint_is_an_error(tiny_npz, tmp_path, capsys):
    assert main(["-q", *_train_args(tiny_npz, tmp_path / "r")]) == 0
    rgb = make_medmnist(tmp_path / "rgb.npz", channels=3, classes=2, size=24)  # flatten size differs
    assert main(_train_args(rgb, tmp_path / "r2", "--weights", str(tmp_path / "r" / "best.pt"))) == 2
    assert "fc1.weight' has shape" in capsys.readouterr().err
    assert not (tmp_path / "r2").exists()


def _run_cli(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "smallmed.cli", *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **kw)


def test_sigkill_then_resume_gives_the_same_result(tmp_path):
    data = make_medmnist(tmp_path / "d.npz", n=(600, 40, 40), size=16)
    args = lambda out: _train_args(data, out, "--epochs", "8", "--augment", "hflip", "--seed", "3")  # noqa: E731
    ref = _run_cli(args(tmp_path / "a"))
    victim = _run_cli(args(tmp_path / "b"))
    last = tmp_path / "b" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and victim.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)  # somewhere inside a later epoch
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert ref.wait() == 0, ref.stderr.read().decode()[-2000:]
    if (tmp_path / "b" / "metrics.json").exists():
        pytest.skip("the run finished before it could be killed on this machine")
    resumed = _run_cli(["train", "--resume", str(tmp_path / "b")])
    assert resumed.wait() == 0, resumed.stderr.read().decode()[-2000:]
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    b = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert a["test"] == b["test"] and a["best_epoch"] == b["best_epoch"]


def test_ddp_two_cpu_processes_with_gloo(tmp_path):
    """torchrun --nproc_per_node 2 on CPU: both ranks train in step; rank 0 writes the run."""
    data = make_medmnist(tmp_path / "d.npz", n=(64, 16, 16), size=16)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "smallmed.cli", "-q", *_train_args(data, tmp_path / "r")]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["epochs"] == 2 and 0 <= m["test"]["auc"] <= 1
    # each rank sees half the (even) training set per epoch: 64 images / 2 ranks / batch 16 = 2 steps
    hist = (tmp_path / "r" / "history.csv").read_text().splitlines()
    assert len(hist) == 3


def test_internal_errors_get_one_sentence_and_exit_3(monkeypatch, tmp_path, capsys):
    from smallmed import cli

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(cli, "cmd_models", lambda a: 1 / 0)
    assert cli.main(["models"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error in models: division by zero" in err and "Traceback" not in err
    logs = list((tmp_path / "smallmed" / "logs").glob("internal-error-*.log"))
    assert len(logs) == 1 and "ZeroDivisionError" in logs[0].read_text()
    with pytest.raises(ZeroDivisionError):
        cli.main(["--debug", "models"])
