"""--log tensorboard / mlflow mirror a run; the run folder stays the record, and a logger's failure is one warning."""

from __future__ import annotations

import csv
import logging

import pytest

from smallmed import SmallmedError, TrainConfig, fit


def test_tensorboard_gets_every_epoch_and_the_final_metrics(tiny_cfg, tmp_path):
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
