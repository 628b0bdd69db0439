"""HyperSpace details a user relies on: exact float64 values, set(), to_dict(), messages, repr, devices."""

import math

import pytest
import torch

import glocal


def test_initial_values_are_converted_in_float64_before_the_raw_dtype():
    """A float32 tensor or a Python float is mapped through float64: log(0.1) is exact to float64 round-off."""
    space = glocal.HyperSpace(dtype=torch.float64, lr=glocal.Log(torch.tensor(0.1, dtype=torch.float32)),
                              wd=glocal.Log(1e-3), momentum=glocal.Logit(torch.tensor([0.9], dtype=torch.float16)))
    assert space.raw.dtype == torch.float64
    assert space.raw[1].item() == math.log(1e-3)  # bit for bit: no float32 detour
    assert space.raw[0].item() == math.log(float(torch.tensor(0.1, dtype=torch.float32)))
    assert space.to_dict()["wd"] == pytest.approx(1e-3, rel=1e-15)
    assert space.raw.device == torch.device("cpu") and space.raw.is_leaf


def test_default_dtype_and_explicit_device():
    space = glocal.HyperSpace(lr=glocal.Log(0.1), device="cpu")
    assert space.raw.dtype == torch.get_default_dtype() and space.raw.device.type == "cpu"


def test_to_dict_gives_floats_for_scalars_and_lists_for_vectors():
    space = glocal.HyperSpace(dtype=torch.float64, lr=glocal.Log(0.1), one=glocal.Log(torch.tensor([2.0])),
                              w=glocal.Log(torch.tensor([1.0, 3.0])))
    values = space.to_dict()
    assert isinstance(values["lr"], float) and values["lr"] == pytest.approx(0.1, rel=1e-15)
    assert values["one"] == pytest.approx([2.0]) and isinstance(values["one"], list)  # shape (1,) stays a list
    assert values["w"] == pytest.approx([1.0, 3.0]) and isinstance(values["w"], list)
    assert space.labels() == ["lr", "one[0]", "w[0]", "w[1]"]
    assert repr(space) == "HyperSpace(lr=log:0.1, one=log:[1 values], w=log:[2 values])"


def test_membership_iteration_and_transforms():
    space = glocal.HyperSpace(lr=glocal.Log(0.1), momentum=glocal.Logit(0.9), shift=glocal.Identity(-2.0))
    assert "lr" in space and "momentum" in space and "wd" not in space and 3 not in space
    assert list(space) == ["lr", "momentum", "shift"] and len(space) == 3
    assert space.transform_of("momentum").kind == "logit" and space.transform_of("shift").kind == "identity"
    assert space.to_dict()["shift"] == pytest.approx(-2.0)
    with pytest.raises(ValueError, match=r"unknown hyperparameter 'wd'; this space has \['lr', 'momentum', 'shift'\]"):
        space.transform_of("wd")


def test_set_scalar_vector_and_broadcast():
    space = glocal.HyperSpace(dtype=torch.float64, lr=glocal.Log(0.1), w=glocal.Log(torch.ones(3)))
    space.set(w=torch.tensor([1.0, 2.0, 4.0]), lr=0.5)
    assert space.to_dict()["w"] == pytest.approx([1.0, 2.0, 4.0], rel=1e-15)
    assert space.to_dict()["lr"] == pytest.approx(0.5, rel=1e-15)
    space.set(w=3.0)  # one value for every element
    assert space.to_dict()["w"] == pytest.approx([3.0, 3.0, 3.0], rel=1e-15)
    assert space.raw.is_leaf and space.raw.requires_grad and space.raw.dtype == torch.float64
    with pytest.raises(ValueError, match=r"hyperparameter 'w': expected shape \(3,\)"):
        space.set(w=torch.ones(2))
    with pytest.raises(ValueError, match=r"hyperparameter 'lr': expected shape \(\)"):
        space.set(lr=torch.ones(2))


def test_error_messages_name_the_problem():
    with pytest.raises(ValueError, match=r"^HyperSpace needs at least one hyperparameter, e\.g\. HyperSpace\(lr=Log"):
        glocal.HyperSpace()
    with pytest.raises(ValueError, match=r"'lr': expected a transform .*got float"):
        glocal.HyperSpace(lr=0.1)
    with pytest.raises(ValueError, match=r"hyperparameter 'lr': empty value; expected a value > 0"):
        glocal.HyperSpace(lr=glocal.Log(torch.ones(0)))
    with pytest.raises(ValueError, match=r"'lr'=-1 is out of range; expected a value > 0"):
        glocal.HyperSpace(lr=glocal.Log(-1.0))
    with pytest.raises(ValueError, match=r"'w'=tensor of shape \(2,\) is out of range"):
        glocal.HyperSpace(w=glocal.Log(torch.tensor([1.0, -1.0])))
    with pytest.raises(ValueError, match=r"'x'=inf is not finite; expected any finite real number"):
        glocal.HyperSpace(x=glocal.Identity(math.inf))
    space = glocal.HyperSpace(lr=glocal.Log(0.1), momentum=glocal.Logit(0.5))
    with pytest.raises(ValueError, match=r"space state 'raw': expected shape \(2,\), got \(3,\)"):
        space.load_state_dict({"raw": torch.zeros(3)})


def test_identity_accepts_any_finite_value():
    space = glocal.HyperSpace(dtype=torch.float64, a=glocal.Identity(torch.tensor([-5.0, 0.0, 7.5])))
    torch.testing.assert_close(space.raw.detach(), torch.tensor([-5.0, 0.0, 7.5], dtype=torch.float64))


def test_device_is_honoured():
    """The meta device (no storage) shows where raw lives without needing a GPU."""
    space = glocal.HyperSpace(lr=glocal.Log(0.1), device="meta")
    assert space.raw.device.type == "meta" and space.raw.is_leaf


def test_bad_space_states_are_refused_with_their_message():
    space = glocal.HyperSpace(lr=glocal.Log(0.1), w=glocal.Log(torch.tensor([1.0, 2.0])), dtype=torch.float64)
    mapping = r"^space state: expected a mapping with a 'raw' tensor \(from HyperSpace.state_dict\(\)\)$"
    for bad in ([1.0], {}):
        with pytest.raises(ValueError, match=mapping):
            space.load_state_dict(bad)
    with pytest.raises(ValueError, match=r"^space state 'raw': expected a floating-point tensor, got Tensor of "
                                         r"dtype torch.int64$"):
        space.load_state_dict({"raw": torch.zeros(3, dtype=torch.long)})
    with pytest.raises(ValueError, match=r"^space state 'raw': expected a floating-point tensor, got list$"):
        space.load_state_dict({"raw": [0.0, 0.0, 0.0]})
    with pytest.raises(ValueError, match=r"^space state 'raw': not finite at lr, w\[1\]$"):
        space.load_state_dict({"raw": torch.tensor([math.nan, 0.0, math.inf], dtype=torch.float64)})


def test_initial_values_at_the_bounds_are_accepted_and_outside_named():
    assert glocal.HyperSpace(lr=glocal.Log(1e-8), dtype=torch.float64).to_dict()["lr"] == pytest.approx(1e-8)
    assert glocal.HyperSpace(lr=glocal.Log(10.0), dtype=torch.float64).to_dict()["lr"] == pytest.approx(10.0)
    with pytest.raises(ValueError, match=r"^hyperparameter 'lr'=100 is outside its bounds \[1e-08, 10\]; "
                                         r"declare wider ones, e.g. Log\(value, low=\.\.\., high=\.\.\.\)$"):
        glocal.HyperSpace(lr=glocal.Log(100.0))
    with pytest.raises(ValueError, match=r"expected a real number or a real tensor, a value > 0$"):
        glocal.HyperSpace(lr=glocal.Log("0.1"))


def test_transform_check_uses_the_bounds_of_its_name():
    """An unresolved declaration checked on its own takes the named default bounds (lr: [1e-8, 10])."""
    assert glocal.Identity(20.0).check("x").item() == 20.0
    with pytest.raises(ValueError, match=r"^hyperparameter 'lr'=20 is outside its bounds \[1e-08, 10\]; "
                                         r"declare wider ones, e.g. Identity\(value, low=\.\.\., high=\.\.\.\)$"):
        glocal.Identity(20.0).check("lr")


def test_bounds_are_checked_in_float64_and_must_be_strictly_ordered():
    bad = (r"^hyperparameter 'x': bounds \[{}, {}\]: expected low < high, both {} "
           r"\(or the edges of that range\)$")
    # -1e-50 and 1 + 1e-10 are outside the domain in float64 (in float32 they round onto its edge)
    with pytest.raises(ValueError, match=bad.format("-1e-50", "10", "a value > 0")):
        glocal.HyperSpace(x=glocal.Log(1.0, low=-1e-50, high=10.0))
    with pytest.raises(ValueError, match=bad.format("0.1", "1", r"a value in the open interval \(0, 1\)")):
        glocal.HyperSpace(x=glocal.Logit(0.5, low=0.1, high=1 + 1e-10))
    with pytest.raises(ValueError, match=bad.format("1", "1", "a value > 0")):
        glocal.HyperSpace(x=glocal.Log(1.0, low=1.0, high=1.0))
    # the domain's own edges are allowed as bounds (raw -inf / +inf)
    space = glocal.HyperSpace(x=glocal.Logit(0.5, low=0.0, high=1.0), dtype=torch.float64)
    assert space.raw_low.item() == -math.inf and space.raw_high.item() == math.inf


@pytest.mark.parametrize("value", [0.0, 1.0, 1.5, -0.5])
def test_logit_refuses_the_closed_edges_as_out_of_range(value):
    with pytest.raises(ValueError, match=rf"^hyperparameter 'x'={value:g} is out of range; "
                                         r"expected a value in the open interval \(0, 1\)$"):
        glocal.HyperSpace(x=glocal.Logit(value, low=0.0, high=1.0))


def test_integer_dtype_is_refused_with_the_full_message():
    with pytest.raises(ValueError, match=r"^dtype=torch.int64: expected a floating-point torch dtype \(raw is "
                                         r"optimized by gradient steps\), e.g. torch.float32 or torch.float64$"):
        glocal.HyperSpace(lr=glocal.Log(0.1), dtype=torch.int64)


def test_raw_bounds_share_the_dtype_and_device_of_raw():
    space = glocal.HyperSpace(lr=glocal.Log(0.1), dtype=torch.float32, device="meta")
    for t in (space.raw_low, space.raw_high):
        assert t.dtype == torch.float32 and t.device.type == "meta"


def test_space_states_at_the_bounds_load_and_beyond_them_are_named():
    space = glocal.HyperSpace(dtype=torch.float32, **{f"h{i}": glocal.Log(0.1, low=1e-3, high=2.0)
                                                      for i in range(7)})
    low, high = space.raw_low.double(), space.raw_high.double()
    # exactly at the bounds, and float64 states within round-off of them (equal once in float32)
    for raw in (low, high, low - 1e-12, high + 1e-12):
        space.load_state_dict({"raw": raw})
        assert torch.equal(space.raw.detach(), raw.float())
    with pytest.raises(ValueError, match=r"^space state 'raw': outside the bounds at h0, h1, h2, h3, h4$"):
        space.load_state_dict({"raw": high + 1.0})
    with pytest.raises(ValueError, match=r"^space state 'raw': outside the bounds at h0, h1, h2, h3, h4$"):
        space.load_state_dict({"raw": low - 1.0})
    with pytest.raises(ValueError, match=r"^space state 'raw': not finite at h0, h1, h2, h3, h4$"):
        space.load_state_dict({"raw": torch.full((7,), math.nan, dtype=torch.float64)})
