"""--log tensorboard / mlflow mirror a run; the run folder stays the record, and a logger's failure is one warning."""

from __future__ import annotations

import csv
import logging

import pytest

from smallmed import SmallmedError, TrainConfig, fit


def test_tensorboard_gets_every_epoch_and_the_final_metrics(tiny_cfg, tmp_path, figures):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    m = fit(tiny_cfg(epochs=3, log=("tensorboard",), figures=True))
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"images": 0}).Reload()
    history = list(csv.DictReader(open(tmp_path / "run" / "history.csv")))
    got = [round(e.value, 5) for e in events.Scalars("val_loss")]
    assert got == [round(float(r["val_loss"]), 5) for r in history]
    assert {"roc_test", "loss_curves"} <= set(events.Tags()["images"])
    assert m["test"]["auc"] >= 0  # the run itself is unchanged


def test_mlflow_gets_params_epochs_metrics_and_artifacts(tiny_cfg, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    m = fit(tiny_cfg(epochs=2, log=("mlflow",)))
    assert not list(cwd.iterdir()), "nothing is written outside the run folder"
    assert (tmp_path / "run" / "mlartifacts").is_dir()
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("smallmed").experiment_id])
    assert run.data.params["lr"] == "0.003" and run.data.params["model"] == "small_cnn"  # tiny_cfg's settings
    assert len(client.get_metric_history(run.info.run_id, "val_loss")) == 2
    assert run.data.metrics["test_auc"] == pytest.approx(m["test"]["auc"])
    assert "metrics.json" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_a_tracking_server_that_is_down_costs_one_warning_not_the_run(tiny_cfg, tmp_path, caplog):
    pytest.importorskip("mlflow")
    with caplog.at_level(logging.WARNING, logger="smallmed"):
        m = fit(tiny_cfg(epochs=1, log=("mlflow",), mlflow_uri="http://127.0.0.1:9/"))
    assert (tmp_path / "run" / "metrics.json").exists() and "auc" in m["test"]
    warnings = [r for r in caplog.records if "MLflow logging stopped" in r.getMessage()]
    assert len(warnings) == 1


def test_log_settings_are_checked():
    with pytest.raises(SmallmedError, match="log"):
        TrainConfig(log=("wandb",))
    with pytest.raises(SmallmedError, match="mlflow_uri=.*no effect without log mlflow"):
        TrainConfig(mlflow_uri="http://example.org")


@pytest.fixture
def mlflow_server(tmp_path):
    """A real ``mlflow server`` on 127.0.0.1 (SQLite backend, a free port), stopped at the end."""
    import shutil
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    pytest.importorskip("mlflow")
    exe = shutil.which("mlflow") or str(__import__("pathlib").Path(sys.executable).parent / "mlflow")
    if subprocess.run([exe, "server", "--help"], capture_output=True).returncode != 0:
        pytest.skip("mlflow server is not installed (the full mlflow package provides it)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = tmp_path / "server"
    store.mkdir()
    proc = subprocess.Popen(
        [exe, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}", "--artifacts-destination", str(store / "art")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=store,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(uri + "/health", timeout=1)
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail("mlflow server exited at start")
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not answer in 60 s")
        yield uri
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_study_is_a_parent_run_on_a_real_mlflow_server(mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    from smallmed.cli import main
    from tests.conftest import make_medmnist

    data = make_medmnist(tmp_path / "d.npz", n=(32, 12, 12))
    args = ["study", "medmnist", "--data", str(data), "--model", "small_cnn", "--seeds", "0", "--epochs", "1"]
    assert main([*args, "--log", "mlflow", "--mlflow-uri", mlflow_server, "--out", str(tmp_path / "s")]) == 0
    client = MlflowClient(tracking_uri=mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("smallmed").experiment_id])
    (parent,) = [r for r in runs if r.info.run_name == "study medmnist"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == ["d/baseline/s0", "d/strong/s0"]
    assert parent.data.params["model"] == "small_cnn"
    child = children[0]
    assert child.data.params["epochs"] == "1" and len(client.get_metric_history(child.info.run_id, "val_loss")) == 1
    assert "metrics.json" in {a.path for a in client.list_artifacts(child.info.run_id)}
    assert {"report.md", "comparison.png"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}


def test_a_study_whose_tracking_server_is_down_warns_once_and_finishes(tmp_path, caplog):
    pytest.importorskip("mlflow")
    from smallmed.studies import run_study
    from tests.conftest import make_medmnist

    data = make_medmnist(tmp_path / "d.npz", n=(32, 12, 12))
    kw = dict(data=(str(data),), model="small_cnn", seeds=(0,), epochs=(1,), recipes=("baseline",))
    with caplog.at_level(logging.WARNING, logger="smallmed"):
        report = run_study(
            "medmnist", "quick", out=tmp_path / "s", log=("mlflow",), mlflow_uri="http://127.0.0.1:9/", **kw
        )
    assert report.exists() and (tmp_path / "s" / "runs" / "d" / "baseline" / "s0" / "metrics.json").exists()
    assert len([r for r in caplog.records if "MLflow logging of the study stopped" in r.getMessage()]) == 1


def test_bad_study_input_leaves_no_tracking_store(tmp_path):
    pytest.importorskip("mlflow")
    from smallmed.studies import run_study

    with pytest.raises(SmallmedError, match="nothing.npz"):
        run_study("medmnist", "quick", out=tmp_path / "s", log=("mlflow",), data=(str(tmp_path / "nothing.npz"),))
    assert not (tmp_path / "s" / "mlflow.db").exists()
