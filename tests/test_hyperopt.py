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


def test_state_dict_round_trip_keeps_the_adaptive_rates():
    raw = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = RelativeSGD([raw], lr=0.1, etas=(1.5, 0.5), max_rate=0.5)
    for grad in ([1.0, 2.0], [1.0, -2.0], [3.0, -1.0]):
        _step(opt, raw, grad)
    other_raw = raw.detach().clone().requires_grad_(True)
    other = RelativeSGD([other_raw], lr=0.1)
    other.load_state_dict(opt.state_dict())
    for grad in ([1.0, -1.0], [-1.0, -1.0]):
        _step(opt, raw, grad)
        _step(other, other_raw, grad)
    assert torch.equal(raw, other_raw)


def test_defaults_build_the_named_hyper_optimizers():
    raw = torch.zeros(2, requires_grad=True)
    assert isinstance(defaults.hyper_optimizer(raw), RelativeSGD)
    group = defaults.hyper_optimizer(raw, lr=0.25).param_groups[0]  # adaptive rates up to twice the lr
    assert (group["etas"], group["max_rate"]) == (defaults.HYPER_ETAS, 0.5)
    assert isinstance(defaults.hyper_optimizer(raw, "sgd", 1.0), torch.optim.SGD)
    assert isinstance(defaults.hyper_optimizer(raw, "adam", 0.1), torch.optim.Adam)
    with pytest.raises(ValueError, match="hyper_optimizer"):
        defaults.hyper_optimizer(raw, "lbfgs")


def test_adaptive_rates_equal_torch_rprop_when_each_coordinate_keeps_its_magnitude():
    # |g_i| constant per coordinate: the running RMS is |g_i| exactly, the ratio is sign(g_i), and
    # RelativeSGD with etas is iRprop- (torch.optim.Rprop): grow on agreement, shrink and skip on a flip
    generator = torch.Generator().manual_seed(0)
    magnitudes = torch.tensor([3.0, 1e-4, 20.0, 0.5], dtype=torch.float64)
    raw = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    reference = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    ours = RelativeSGD([raw], lr=0.1, max_step=1.0, etas=(1.5, 0.5), max_rate=0.7)
    theirs = torch.optim.Rprop([reference], lr=0.1, etas=(0.5, 1.5), step_sizes=(0.1 * 0.5 ** 8, 0.7))
    for _ in range(30):
        signs = torch.where(torch.rand(4, generator=generator) < 0.7, 1.0, -1.0).to(torch.float64)
        _step(ours, raw, (signs * magnitudes).tolist())
        reference.grad = signs * magnitudes
        theirs.step()
        assert torch.allclose(raw, reference, rtol=1e-12, atol=1e-15)


def test_adaptive_rate_scales_the_relative_step_and_its_trust_region():
    raw = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = RelativeSGD([raw], lr=0.1, max_step=0.3, etas=(2.0, 0.5), max_rate=1.0)
    _step(opt, raw, [-1.0], local=[-1.0])  # rate 0.1, ratio 1: +0.1
    _step(opt, raw, [-10.0], local=[-1.0])  # agreement: rate 0.2; ratio 10 capped at max_step / lr = 3: +0.6
    assert raw.item() == pytest.approx(0.7, rel=1e-12)
    _step(opt, raw, [1.0], local=[1.0])  # a flip: rate 0.1, no step
    assert raw.item() == pytest.approx(0.7, rel=1e-12)
    _step(opt, raw, [1.0], local=[1.0])  # after a flip: rate kept, step -0.1
    assert raw.item() == pytest.approx(0.6, rel=1e-12)


@pytest.mark.parametrize("kwargs", [{"etas": (0.9, 0.5)}, {"etas": (1.2, 0.0)}, {"etas": (1.2, 1.5)},
                                    {"etas": (1.2, 0.5), "max_rate": 0.01}, {"etas": (1.2, 0.5), "max_rate": math.inf}])
def test_bad_adaptive_rate_arguments(kwargs):
    with pytest.raises(ValueError, match=list(kwargs)[-1]):
        RelativeSGD([torch.zeros(1, requires_grad=True)], lr=0.1, **kwargs)


def test_without_adaptive_rates_a_learning_rate_above_max_rate_is_fine():
    raw = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = RelativeSGD([raw], lr=2.0, max_step=10.0)
    _step(opt, raw, [1.0], local=[1.0])
    assert raw.item() == pytest.approx(-2.0, rel=1e-12)
