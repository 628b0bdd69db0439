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
