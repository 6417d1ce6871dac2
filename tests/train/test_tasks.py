"""Contract over every registered task kind (smallmed.train.tasks): a checkpoint's task_info rebuilds the same
task, the one-line summary names metrics the task reports, and options a task does not use are refused."""

from __future__ import annotations

import pytest

from smallmed import SmallmedError, TrainConfig
from smallmed.train import tasks as T

EXAMPLES = {
    "binary": lambda: T.ClassificationTask(kind="binary", class_names=["a", "b"]),
    "multiclass": lambda: T.ClassificationTask(kind="multiclass", class_names=["a", "b", "c"]),
    "multilabel": lambda: T.ClassificationTask(kind="multilabel", class_names=["a", "b"]),
    "regression": lambda: T.RegressionTask(low=0.0, high=4.0, loss_name="logcosh"),
    "ordinal": lambda: T.OrdinalTask(class_names=["0", "1", "2"]),
    "segmentation": lambda: T.SegmentationTask(),
    "keypoints": lambda: T.KeypointTask(names=["a", "b"]),
}


def test_every_registered_kind_has_an_example_here():
    assert set(T._TASKS) == set(EXAMPLES)


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_task_info_rebuilds_the_same_task(kind):
    task = EXAMPLES[kind]()
    again = T.task_from_info(task.info())
    assert type(again) is type(task) and again.info() == task.info() and again.kind == kind
    assert set(task.summary) & {*task.columns, "acc", "auc", "pck_0.05", "mae_rounded", "tpr_at_fpr"}


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_options_a_task_does_not_use_are_refused(kind):
    task = EXAMPLES[kind]()
    task.check_options(TrainConfig())  # the defaults are accepted by every task
    refusals = {
        "loss": TrainConfig(loss="mse"),
        "calibrate": TrainConfig(calibrate="temperature"),
        "mixup": TrainConfig(mixup=0.4),
        "balance": TrainConfig(balance="sampling"),
    }
    for name, cfg in refusals.items():
        uses = {
            "loss": kind == "regression",
            "calibrate": task.single_label,
            "mixup": task.single_label,
            "balance": not task.dense,
        }[name]
        if uses:
            task.check_options(cfg)
        else:
            with pytest.raises(SmallmedError, match=name):
                task.check_options(cfg)


def test_an_unknown_kind_in_a_checkpoint_is_one_sentence():
    with pytest.raises(SmallmedError, match="task kind='tabular' is not valid"):
        T.task_from_info({"kind": "tabular"})
