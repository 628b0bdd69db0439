import math

import pytest
import torch

import glocal


def test_raw_is_unconstrained_leaf_in_declaration_order():
    space = glocal.HyperSpace(lr=glocal.Log(0.05), weight_decay=glocal.Log(1e-3), momentum=glocal.Logit(0.9))
    assert space.names == ("lr", "weight_decay", "momentum")
    assert space.raw.is_leaf and space.raw.requires_grad
    expected = torch.tensor([math.log(0.05), math.log(1e-3), math.log(0.9 / 0.1)])
    torch.testing.assert_close(space.raw.detach(), expected)
    values = space.values()
    assert values["lr"].item() == pytest.approx(0.05)
    assert values["momentum"].item() == pytest.approx(0.9)
    assert values["lr"].requires_grad  # differentiable function of raw


def test_vector_entry_counts_elements():
    space = glocal.HyperSpace(lr=glocal.Log(0.1), class_weights=glocal.Log(torch.ones(10)))
    assert len(space) == 11
    assert space.values()["class_weights"].shape == (10,)
    assert space.labels()[:3] == ["lr", "class_weights[0]", "class_weights[1]"]
    assert space.slice_of("class_weights") == slice(1, 11)


def test_gradient_flows_through_transforms():
    space = glocal.HyperSpace(lr=glocal.Log(0.5), momentum=glocal.Logit(0.25), dtype=torch.float64)
    v = space.values()
    (v["lr"] + v["momentum"]).backward()
    torch.testing.assert_close(space.raw.grad, torch.tensor([0.5, 0.25 * 0.75], dtype=torch.float64))


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (glocal.Log(0.0), "lr.*> 0"),
        (glocal.Log(-1.0), "lr.*> 0"),
        (glocal.Logit(1.0), "lr.*\\(0, 1\\)"),
        (glocal.Logit(0.0), "lr.*\\(0, 1\\)"),
        (glocal.Log(float("nan")), "lr.*not finite"),
        (glocal.Log(torch.tensor([1.0, -2.0])), "lr.*> 0"),
        (0.1, "lr.*transform"),
    ],
)
def test_invalid_declarations_name_the_hyperparameter_and_range(entry, message):
    with pytest.raises(ValueError, match=message):
        glocal.HyperSpace(lr=entry)


def test_unknown_name_and_set():
    space = glocal.HyperSpace(lr=glocal.Log(0.1))
    with pytest.raises(ValueError, match="unknown hyperparameter 'wd'"):
        space.slice_of("wd")
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        space.set(wd=0.1)
    space.set(lr=0.2)
    assert space.to_dict()["lr"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match=r"lr.*> 0"):
        space.set(lr=-1)


def test_state_dict_round_trip():
    space = glocal.HyperSpace(lr=glocal.Log(0.1), momentum=glocal.Logit(0.5))
    state = space.state_dict()
    space.set(lr=0.3)
    space.load_state_dict(state)
    assert space.to_dict()["lr"] == pytest.approx(0.1)
    assert space.raw.is_leaf


@pytest.mark.parametrize("value", ["abc", None, True, "0.1", 1 + 2j])
def test_non_numeric_values_name_the_hyperparameter(value):
    with pytest.raises(ValueError, match=r"hyperparameter 'lr'.*real number"):
        glocal.HyperSpace(lr=glocal.Log(value))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64])
def test_integer_or_complex_dtype_is_a_clear_error(dtype):
    with pytest.raises(ValueError, match=r"dtype.*floating-point"):
        glocal.HyperSpace(lr=glocal.Log(0.1), dtype=dtype)


def test_bounds_default_by_name_then_by_kind_and_can_be_declared():
    space = glocal.HyperSpace(lr=glocal.Log(0.1), weight_decay=glocal.Log(1e-3), momentum=glocal.Logit(0.9),
                              scale=glocal.Log(2.0, low=0.5, high=4.0), shift=glocal.Identity(0.0))
    assert space.bounds_of("lr") == glocal.space.DEFAULT_BOUNDS["lr"]
    assert space.bounds_of("momentum") == glocal.Logit.default_bounds
    assert space.bounds_of("scale") == (0.5, 4.0)
    assert space.bounds_of("shift") == (-math.inf, math.inf)
    assert glocal.HyperSpace(lr=glocal.Log(50.0, high=100.0)).bounds_of("lr") == (1e-8, 100.0)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (glocal.Log(1e9), "outside its bounds"),
        (glocal.Log(1e-9), "outside its bounds"),
        (glocal.Log(0.1, low=0.2), "outside its bounds"),
        (glocal.Log(0.1, low=-1.0), "bounds"),
        (glocal.Log(0.1, low=1.0, high=0.5), "low < high"),
        (glocal.Logit(0.5, high=1.5), "bounds"),
        (glocal.Log(0.1, high=float("nan")), "high=nan"),
        (glocal.Log(0.1, low="x"), "low='x'"),
    ],
)
def test_bad_bounds_name_the_hyperparameter(entry, message):
    with pytest.raises(ValueError, match=f"'lr'.*{message}"):
        glocal.HyperSpace(lr=entry)


def test_domain_edges_mean_unbounded():
    space = glocal.HyperSpace(lr=glocal.Log(0.1, low=0.0, high=math.inf), m=glocal.Logit(0.5, low=0.0, high=1.0))
    assert torch.isinf(space.raw_low).all() and torch.isinf(space.raw_high).all()
    assert space.clamp_() == {}


def test_clamp_stops_values_at_their_bounds_and_says_which():
    space = glocal.HyperSpace(lr=glocal.Log(0.1), w=glocal.Log(torch.ones(4), low=0.5, high=2.0),
                              dtype=torch.float64)
    with torch.no_grad():
        space.raw += torch.tensor([1e6, -5.0, 0.0, 5.0, 0.1])
    hit = space.clamp_()
    assert hit == {"lr": "high", "w": "low: 1 of 4, high: 1 of 4"}
    values = space.to_dict()
    assert values["lr"] == pytest.approx(10.0)
    assert values["w"] == pytest.approx([0.5, 1.0, 2.0, math.exp(0.1)])
    assert space.clamp_() == {}  # now inside
    assert space.raw.is_leaf and space.raw.requires_grad


def test_set_respects_the_bounds():
    space = glocal.HyperSpace(lr=glocal.Log(0.1, high=1.0))
    with pytest.raises(ValueError, match="outside its bounds"):
        space.set(lr=2.0)
    space.set(lr=0.5)
    assert space.to_dict()["lr"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (torch.tensor([float("nan"), 0.0]), "not finite at lr"),
        (torch.tensor([0.0, float("inf")]), "not finite at momentum"),
        (torch.tensor([100.0, 0.0]), "outside the bounds at lr"),
        (torch.tensor([0.0]), "shape"),
        (torch.tensor([0, 0]), "floating-point"),
    ],
)
def test_load_state_dict_rejects_bad_states_without_changing_anything(raw, message):
    space = glocal.HyperSpace(lr=glocal.Log(0.1), momentum=glocal.Logit(0.5))
    before = space.raw.detach().clone()
    with pytest.raises(ValueError, match=message):
        space.load_state_dict({"raw": raw})
    assert torch.equal(space.raw.detach(), before)
