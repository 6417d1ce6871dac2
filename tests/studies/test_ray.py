"""Ray: the study grid as Ray tasks and the recipe search on Ray Tune, on one local Ray instance shared by the
tests here (starting Ray and its workers costs more than the tests themselves)."""

from __future__ import annotations

import pytest

from tests.conftest import make_medmnist
from tests.test_tune import _tc, _trials


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason="pip install 'smallmed[ray]'")
    pytest.importorskip("ray.tune", reason="pip install 'smallmed[ray]'")
    # Ray runs its workers at niceness 15; beside the suite's other pytest worker they then starve (a one-epoch
    # tiny run took minutes): the test instance's workers run at the suite's priority
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _system_config={"worker_niceness": 0})
    yield ray
    ray.shutdown()


def test_grid_runs_as_ray_tasks_on_a_local_instance(local_ray, tmp_path, tiny_npz):
    from smallmed import TrainConfig
    from smallmed.studies import run_grid

    cells = [
        TrainConfig(
            data=str(tiny_npz),
            model="small_cnn",
            epochs=1,
            seed=s,
            out=str(tmp_path / f"r{s}"),
            progress=False,
            augment="none",
        )
        for s in (0, 1)
    ]
    results = run_grid(cells, backend="ray")
    assert [r["epochs"] for r in results] == [1, 1]
    assert all((tmp_path / f"r{s}" / "metrics.json").exists() for s in (0, 1))


def test_the_search_runs_on_ray_tune_and_resumes_from_its_experiment(local_ray, tmp_path):
    pytest.importorskip("optuna")
    from smallmed.tune import tune

    data = make_medmnist(tmp_path / "d.npz", n=(48, 24, 24), size=16)
    report = tune(_tc(data, trials=3, backend="ray", ensemble=2), tmp_path / "r").read_text()
    rows = _trials(tmp_path / "r")
    assert len(rows) == 3 and all(r["state"] in ("COMPLETE", "PRUNED") for r in rows)
    assert "Best trial" in report and (tmp_path / "r" / "best.yaml").exists()
    assert (tmp_path / "r" / "ensemble" / "metrics.json").exists()
    # the search resumes from OUT/ray (Tuner.restore): no trial is started again
    trials = sorted(p.name for p in (tmp_path / "r" / "ray" / "smallmed-tune").iterdir() if p.is_dir())
    assert len(trials) == 3
    tune(_tc(data, trials=3, backend="ray", ensemble=2), tmp_path / "r")
    assert sorted(p.name for p in (tmp_path / "r" / "ray" / "smallmed-tune").iterdir() if p.is_dir()) == trials
