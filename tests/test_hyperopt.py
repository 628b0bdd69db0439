"""RelativeSGD: per-coordinate steps in units of the local hypergradient's running RMS, trust region."""

import math

import pytest
import torch

from glocal import defaults
from glocal.hyperopt import RelativeSGD


def _step(opt, raw, grad, local=None):
    raw.grad = torch.tensor(grad, dtype=torch.float64)
    if local is not None:
        opt.set_reference(raw, torch.tensor(local, dtype=torch.float64))
    opt.step()


def test_first_step_is_lr_times_the_ratio_to_the_local_value_per_coordinate():
    raw = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = RelativeSGD([raw], lr=0.1, beta=0.9, max_step=10.0)
    # coordinates on very different scales: the local one moves each by lr, the estimate by lr x ratio
    _step(opt, raw, [-2.0, 3e-4, -1e-6], local=[-1.0, 1e-4, -1e-6])
    assert raw.detach().tolist() == pytest.approx([0.2, -0.3, 0.1], rel=1e-12)


def test_running_rms_and_bias_correction():
    raw = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = RelativeSGD([raw], lr=1.0, beta=0.5, max_step=100.0)
    _step(opt, raw, [1.0], local=[1.0])
    _step(opt, raw, [3.0], local=[3.0])
    # mean square (bias-corrected): (0.5 * 0.5 * 1 + 0.5 * 9) / (1 - 0.25) = 6.333...
    rms = math.sqrt((0.25 * 1 + 0.5 * 9) / 0.75)
    assert raw.item() == pytest.approx(-1.0 - 3.0 / rms, rel=1e-12)


def test_trust_region_clips_each_coordinate():
    raw = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = RelativeSGD([raw], lr=0.1, max_step=0.25)
    _step(opt, raw, [100.0, -0.5], local=[1.0, -1.0])
    assert raw.detach().tolist() == pytest.approx([-0.25, 0.05], rel=1e-12)


def test_without_reference_it_normalises_by_the_followed_hypergradient():
    raw = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = RelativeSGD([raw], lr=0.1, max_step=1.0)
    _step(opt, raw, [5.0, -1e-3])
    assert raw.detach().tolist() == pytest.approx([-0.1, 0.1], rel=1e-12)


def test_zero_hypergradient_coordinate_does_not_move():
    raw = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = RelativeSGD([raw], lr=0.1)
    _step(opt, raw, [0.0, 1.0], local=[0.0, 1.0])
    assert raw.detach().tolist() == pytest.approx([0.0, -0.1])
    assert torch.isfinite(raw).all()


@pytest.mark.parametrize("kwargs", [{"lr": 0.0}, {"lr": math.inf}, {"max_step": -1.0}, {"beta": 1.0}])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        RelativeSGD([torch.zeros(1, requires_grad=True)], **kwargs)


def test_reference_for_a_foreign_tensor_is_an_error():
    opt = RelativeSGD([torch.zeros(1, requires_grad=True)])
    with pytest.raises(ValueError, match="param"):
        opt.set_reference(torch.zeros(1, requires_grad=True), torch.ones(1))


def test_state_dict_round_trip():
    raw = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = RelativeSGD([raw], lr=0.1)
    _step(opt, raw, [1.0, 2.0], local=[1.0, 1.0])
    other_raw = raw.detach().clone().requires_grad_(True)
    other = RelativeSGD([other_raw], lr=0.1)
    other.load_state_dict(opt.state_dict())
    _step(opt, raw, [1.0, 1.0], local=[2.0, 2.0])
    _step(other, other_raw, [1.0, 1.0], local=[2.0, 2.0])
    assert torch.equal(raw, other_raw)


def test_defaults_build_the_named_hyper_optimizers():
    raw = torch.zeros(2, requires_grad=True)
    assert isinstance(defaults.hyper_optimizer(raw), RelativeSGD)
    assert isinstance(defaults.hyper_optimizer(raw, "sgd", 1.0), torch.optim.SGD)
    assert isinstance(defaults.hyper_optimizer(raw, "adam", 0.1), torch.optim.Adam)
    with pytest.raises(ValueError, match="hyper_optimizer"):
        defaults.hyper_optimizer(raw, "lbfgs")
