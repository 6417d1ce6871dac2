"""The ``smallmed`` command: thin shells over the Python API, one-sentence errors, exit codes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from smallmed.cli import main
from tests.conftest import make_medmnist

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}


def _train_args(data, out, *extra):
    return [
        "train",
        "--data",
        str(data),
        "--model",
        "small_cnn",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--augment",
        "none",
        "--no-progress",
        "--out",
        str(out),
        *extra,
    ]


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
    args = [
        "-q",
        "train",
        "--config",
        str(tmp_path / "run.yaml"),
        "--epochs",
        "1",
        "--no-progress",
        "--augment",
        "none",
        "--out",
        str(tmp_path / "r"),
        "--set",
        "lr=0.002",
        "betas=[0.9,0.99]",
    ]
    assert main(args) == 0
    import yaml

    cfg = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert cfg["epochs"] == 1 and cfg["lr"] == 0.002 and cfg["betas"] == [0.9, 0.99] and cfg["model"] == "small_cnn"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--data", "/nonexistent/x.npz"], "x.npz' not found"),
        (["train", "--data", "DATA", "--model", "resnt18"], "Did you mean 'resnet18'"),
        (["train", "--data", "DATA", "--fraction", "0"], "fraction=0.0"),
        (["train", "--data", "DATA", "--set", "lrr=1"], "Did you mean 'lr'"),
        (["train", "--resume", "/nonexistent/run"], "not a smallmed run folder"),
        (["evaluate", "/nonexistent/run"], "run folder not found"),
        (["data", "stats", "nosuchdata"], "not found; looked at"),
        (["data", "fetch", "cifar10"], "known MedMNIST names"),
    ],
)
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
    return subprocess.Popen(
        [sys.executable, "-m", "smallmed.cli", *args], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw
    )


def test_internal_errors_get_one_sentence_and_exit_3(monkeypatch, tmp_path, capsys):
    from smallmed import cli
    from smallmed.cli import tools

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(tools, "cmd_models", lambda a: 1 / 0)
    assert cli.main(["models"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error in models: division by zero" in err and "Traceback" not in err
    logs = list((tmp_path / "smallmed" / "logs").glob("internal-error-*.log"))
    assert len(logs) == 1 and "ZeroDivisionError" in logs[0].read_text()
    with pytest.raises(ZeroDivisionError):
        cli.main(["--debug", "models"])
