"""A short training run at the default hyperparameters lowers the validation loss."""

import pytest
import torch

from glocal_bench import tasks


def run(task, steps):
    opt = torch.optim.SGD(task.model.parameters(), **{k: v for k, v in task.space.to_dict().items()})
    for _, (x, y) in zip(range(steps), task.batches(), strict=False):
        opt.zero_grad()
        task.train_loss(task.model(x), y).backward()
        opt.step()


@pytest.mark.parametrize(("name", "steps", "kw"), [("logistic-digits", 100, {}),
                                                   ("mnist1d-mlp", 150, {}),
                                                   ("mnist1d-cnn", 60, {"num_train": 1000})])
def test_short_run_lowers_validation_loss(name, steps, kw):
    task = tasks.make(name, **kw)
    before = task.evaluate()
    run(task, steps)
    after = task.evaluate()
    assert after["val_loss"] < 0.8 * before["val_loss"]
    assert after["test_accuracy"] > before["test_accuracy"] + 0.1
