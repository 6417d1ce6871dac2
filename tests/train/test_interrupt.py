"""Interrupted runs resume to the same result; DDP ranks stay in step; schedules undo their own freezing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from smallmed import fit, resume
from tests.conftest import make_medmnist

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}:{ROOT / 'src'}"}

# Run the CLI, but after the N-th CSV written through atomic_write_csv (history rows per epoch, a study's
# results.csv) drop a marker and wait to be killed: the kill lands on a known progress point on any machine,
# never on a timer.
HOLD_AT_CALL = textwrap.dedent("""
    import sys, time, pathlib
    import smallmed.io as C
    import smallmed.train.loop as L
    import smallmed.studies.bn as B
    hold, marker = int(sys.argv[1]), pathlib.Path(sys.argv[2])
    calls = [0]
    orig = C.atomic_write_csv
    def write(path, rows):
        orig(path, rows)
        calls[0] += 1
        if calls[0] == hold:
            marker.write_text("ready")
            time.sleep(600)
    L.atomic_write_csv = B.atomic_write_csv = write
    from smallmed.cli import main
    sys.exit(main(sys.argv[3:]))
""")


def _kill_at(hold: int, marker: Path, args: list[str]) -> None:
    """Start the CLI with ``args``, SIGKILL it once it holds at its ``hold``-th CSV write."""
    victim = subprocess.Popen(
        [sys.executable, "-c", HOLD_AT_CALL, str(hold), str(marker), *args],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 240
    while not marker.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert marker.exists(), victim.stderr.read().decode()[-2000:]
    victim.send_signal(signal.SIGKILL)
    victim.wait()


def _train_args(data, out, *extra):
    return [
        "-q",
        "train",
        "--data",
        str(data),
        "--model",
        "small_cnn",
        "--epochs",
        "4",
        "--batch-size",
        "16",
        "--augment",
        "hflip",
        "--seed",
        "3",
        "--no-progress",
        "--out",
        str(out),
        *extra,
    ]


def test_sigkill_on_a_progress_marker_then_resume_gives_the_same_result(tmp_path):
    data = make_medmnist(tmp_path / "d.npz", n=(96, 24, 24), size=16)
    ref = subprocess.run(
        [sys.executable, "-m", "smallmed.cli", *_train_args(data, tmp_path / "a")],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ref.returncode == 0, ref.stderr[-2000:]
    _kill_at(2, tmp_path / "marker", _train_args(data, tmp_path / "b"))  # after epoch 2's history row
    assert not (tmp_path / "b" / "metrics.json").exists()
    resumed = subprocess.run(
        [sys.executable, "-m", "smallmed.cli", "-q", "train", "--resume", str(tmp_path / "b")],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    b = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert a["test"] == b["test"] and a["best_epoch"] == b["best_epoch"]


DDP_SCRIPT = textwrap.dedent("""
    import os, sys, torch
    import smallmed.train.loop as L
    from smallmed import TrainConfig, fit
    rank, out = int(os.environ["RANK"]), sys.argv[2]
    class Count:
        steps, model = 0, None
        def on_epoch_start(self, epoch, model): Count.model = model
        def on_batch_end(self, epoch, step, loss): Count.steps += 1
    def save():
        torch.save({"state": {k: v.detach().cpu() for k, v in Count.model.state_dict().items()}, "steps": Count.steps},
                   f"{out}/rank{rank}.pt")
    orig = L._finish
    def finish(setup, run_dir, model, history, best_epoch):
        save()  # the weights after the last step, before the best epoch is reloaded
        return orig(setup, run_dir, model, history, best_epoch)
    L._finish = finish
    cfg = TrainConfig(data=sys.argv[1], model="small_cnn", epochs=2, batch_size=16, augment="hflip", progress=False,
                      out=out + "/run")
    fit(cfg, callbacks=[Count()])
    if rank != 0:
        save()
""")


def test_ddp_ranks_end_with_identical_weights_and_the_expected_steps(tmp_path):
    """torchrun --nproc_per_node 2 on CPU (gloo): 64 images / 2 ranks / batch 16 = 2 steps per epoch each."""
    data = make_medmnist(tmp_path / "d.npz", n=(64, 16, 16), size=16)
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
        str(data),
        str(tmp_path),
    ]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["steps"] == r1["steps"] == 4
    # parameters are identical on every rank; BatchNorm running statistics are each rank's own until DDP
    # broadcasts rank 0's before the next forward pass (rank 0 writes the checkpoints)
    params = [k for k in r0["state"] if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert len(params) > 4
    for k in params:
        torch.testing.assert_close(r0["state"][k], r1["state"][k], rtol=0, atol=0, msg=k)
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["epochs"] == 2


class _StopAt:
    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_start(self, epoch, model):
        if epoch == self.epoch:
            raise KeyboardInterrupt  # after epoch-1's checkpoint: as a kill between epochs

    def on_batch_end(self, *a):
        pass


@pytest.mark.parametrize(
    "kind,kw",
    [
        ("svd", dict(method="sp-svd-9")),
        ("factorized", dict(conv="sfconv", rank_ratio=0.5, kl_weight=0.01)),
        ("rff", dict(rff_epochs=(2,))),
    ],
)
def test_killed_run_resumes_to_the_same_metrics(tiny_cfg, tmp_path, kind, kw):
    ref = fit(tiny_cfg(epochs=3, out=str(tmp_path / "a"), augment="hflip", **kw))
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_cfg(epochs=3, out=str(tmp_path / "b"), augment="hflip", **kw), callbacks=[_StopAt(2)])
    again = resume(tmp_path / "b")
    assert again["test"] == ref["test"] and again["best_epoch"] == ref["best_epoch"]


def test_rffreeze_restores_its_own_layers():
    from smallmed import create_model
    from smallmed.schedules import RFFreeze, following_norms, rff_layers

    model = create_model("small_cnn", 2, in_chans=1, input_size=32).train()
    layers = rff_layers(model, (1, 32, 32))
    cb = RFFreeze(model, layers, epochs=(2,), norms=following_norms(model, layers, (1, 32, 32)))
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    cb.on_epoch_start(0, model)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before
    cb.on_epoch_start(1, model)  # the middle epoch (1-based 2): frozen, BN after them in eval mode
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(any(n.startswith(layer + ".") for layer in [*layers, *cb.norms.values()]) for n in frozen)
    assert not any(model.get_submodule(b).training for b in cb.norms.values())
    cb.on_epoch_start(2, model)  # no other schedule runs: RFFreeze gives its layers back itself
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before
    assert all(model.get_submodule(b).training for b in cb.norms.values())


def _results(path: Path) -> list[dict]:
    import csv

    rows = list(csv.DictReader(open(path, newline="")))
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # wall time differs by nature


def _study_args(data: Path, out: Path) -> list[str]:
    return ["-q", "study", "bn", "--data", str(data), "--model", "small_cnn", "--norms", "none", "bn", "--seeds", "0",
            "--epochs", "2", "--batch-size", "16", "--max-train", "0", "--out", str(out)]  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted_study(tmp_path_factory) -> tuple[Path, Path]:
    """One uninterrupted run of the tiny study (per test worker), the reference for every kill moment."""
    root = tmp_path_factory.mktemp("study-ref")
    data = make_medmnist(root / "d.npz", n=(64, 16, 16), size=16)
    ref = subprocess.run([sys.executable, "-m", "smallmed.cli", *_study_args(data, root / "ref")], env=ENV,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert ref.returncode == 0, ref.stderr[-2000:]
    return data, root / "ref"


@pytest.mark.parametrize("hold", [1, 3, 5])  # history of cell 1 epoch 1; cell 2 epoch 1; results.csv
def test_study_killed_at_three_moments_resumes_to_the_same_results(tmp_path, uninterrupted_study, hold):
    """SIGKILL after the first epoch file, in the second cell, and while writing the report: the same
    command then finishes with the results.csv of an uninterrupted run."""
    data, ref = uninterrupted_study
    out = tmp_path / f"k{hold}"
    _kill_at(hold, tmp_path / f"m{hold}", _study_args(data, out))
    again = subprocess.run([sys.executable, "-m", "smallmed.cli", *_study_args(data, out)], env=ENV,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
    got = [{k: v.replace(str(out), "OUT") for k, v in r.items()} for r in _results(out / "results.csv")]
    want = [{k: v.replace(str(ref), "OUT") for k, v in r.items()} for r in _results(ref / "results.csv")]
    assert got == want, hold


@pytest.mark.parametrize("how", ["oserror", "torch"])
def test_a_full_disk_gives_one_sentence_and_keeps_the_old_file(tmp_path, how):
    """ENOSPC while writing (directly, or as torch.save reports it: a RuntimeError raised while handling
    the OSError) names the file; the previous version stays whole and no temporary file is left. Any other
    error inside the writer is not dressed up as a write failure."""
    import errno

    from smallmed.errors import SmallmedError
    from smallmed.io import atomic_save, atomic_write_file

    target = tmp_path / "best.pt"
    atomic_save({"epoch": 1}, target)
    before = target.read_bytes()

    def failing(code):
        def write(f):
            f.write(b"partial")
            try:
                raise OSError(code, os.strerror(code))
            except OSError:
                if how == "torch":
                    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos") from None
                raise

        return write

    with pytest.raises(SmallmedError, match=r"best\.pt: could not be written \(No space left on device\); the prev"):
        atomic_write_file(target, failing(errno.ENOSPC))
    with pytest.raises(SmallmedError, match=r"new\.pt: could not be written .*; nothing was written\."):
        atomic_write_file(tmp_path / "new.pt", failing(errno.ENOSPC))
    with pytest.raises(RuntimeError if how == "torch" else FileNotFoundError):
        atomic_write_file(target, failing(errno.ENOENT))
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]
