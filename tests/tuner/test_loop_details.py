"""The online loop's bookkeeping around faults and checkpoints: windows restart after a recovery, every
recovery is counted and reported, a checkpoint can be taken right after one, and states are checked."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F
from tuner_helpers import problem, tuner_for

import glocal
from glocal.loop import History, check_like


def nan_batch(batch):
    x, y = batch
    return torch.full_like(x, math.nan), y


def test_a_restored_fault_restarts_the_window_and_each_one_is_counted():
    tuner, batches = tuner_for(glocal.Local(window=4))
    for i in range(2):
        tuner.step(batches[i])
    for fault in (1, 2):
        with torch.no_grad():
            tuner.model[0].weight[0, 0] = math.nan  # a fault from outside the step (e.g. a hook)
        assert tuner.step(batches[2]).get("restored")
        assert tuner.restored_faults == fault
        state = tuner.state_dict()  # a checkpoint right after the recovery
        assert state["steps_in_window"] == 0 and state["buffer"] == []
    # the window starts again at the restored state: four good steps to its end, not the two left
    updated = [tuner.step(batches[(3 + i) % len(batches)])["updated"] for i in range(4)]
    assert updated == [False, False, False, True]


def test_each_reverted_update_is_counted_and_reported_once():
    tuner, batches = tuner_for(glocal.Local(window=2), hyper_lr=0.01)
    reverts = []
    tuner.listeners.append(lambda record: reverts.append(record.step) if record.kind == "revert" else None)
    raw0 = tuner.space.raw.detach().clone()
    tuner.step(batches[0])
    assert tuner.step(batches[1])["updated"] and not torch.equal(tuner.space.raw, raw0)
    assert tuner.step(nan_batch(batches[2])).get("skipped")  # undoes the update made at step 2
    assert tuner.reverted_updates == 1 and torch.equal(tuner.space.raw, raw0)
    state = tuner.state_dict()  # a checkpoint right after the recovery
    assert state["steps_in_window"] == 0 and state["buffer"] == [] and state["raw_before_update"] is None
    tuner.step(nan_batch(batches[3]))  # nothing left to undo: phi stays, nothing more is counted
    assert tuner.reverted_updates == 1 and torch.equal(tuner.space.raw, raw0)
    tuner.step(batches[4])
    assert tuner.step(batches[5])["updated"]
    tuner.step(nan_batch(batches[0]))
    assert tuner.reverted_updates == 2 and reverts == [3, 7]


def test_a_corrupted_checkpoint_without_a_finite_state_stops_with_a_clear_error():
    """A checkpoint from before the first step holds no snapshot; if its weights are not finite there is
    nothing to return to."""
    source, batches = tuner_for(glocal.Local(window=2))
    state = source.state_dict()
    first = next(iter(state["model"]))
    state["model"][first][0, 0] = math.nan
    tuner, _ = tuner_for(glocal.Local(window=2))
    tuner.load_state_dict(state)
    with pytest.raises(FloatingPointError,
                       match=r"^the model's parameters are not finite at step 1 and there is no finite state "
                             r"to return to$"):
        tuner.step(batches[0])


def test_a_state_that_is_not_a_dict_is_refused_by_name():
    tuner, _ = tuner_for(glocal.Local(window=2))
    with pytest.raises(ValueError, match=r"^state: expected a dict from state_dict\(\), got list$"):
        tuner.load_state_dict([1, 2])


def test_history_load_state_dict_copies():
    """Loading one state into two histories (resuming twice from one checkpoint) must not share lists."""
    state = {"train_loss": [1.0], "val_steps": [1], "val_loss": [0.5], "windows": [{"end": 1}]}
    history = History()
    history.load_state_dict(state)
    history.train_loss.append(2.0)
    history.windows[0]["end"] = 9
    assert state == {"train_loss": [1.0], "val_steps": [1], "val_loss": [0.5], "windows": [{"end": 1}]}


def test_check_like_accepts_none_and_extra_keys_and_names_what_differs():
    t = torch.zeros(2)
    check_like(t, None, "x")
    check_like(None, [1], "x")
    check_like({"a": t}, {"a": t.clone(), "extra": 1}, "x")  # only the keys both have are compared
    cases = [
        (t, torch.zeros(3), r"^x: expected a tensor of shape \(2,\), torch.float32; got shape \(3,\), torch.float32$"),
        (t, torch.zeros(2, dtype=torch.float64),
         r"^x: expected a tensor of shape \(2,\), torch.float32; got shape \(2,\), torch.float64$"),
        (t, [0.0, 0.0], r"^x: expected a tensor of shape \(2,\), torch.float32; got list$"),
        ({"a": t}, [t], r"^x: expected a dict, got list$"),
        ({"a": t}, {"a": torch.zeros(1)}, r"^x\['a'\]: expected a tensor of shape"),
        ([t, t], [t], r"^x: expected 2 entries, got 1$"),
        ([t], {"a": t}, r"^x: expected 1 entries, got dict$"),
        ([t, [t]], [t, [torch.zeros(5)]], r"^x\[1\]\[0\]: expected a tensor of shape \(2,\)"),
    ]
    for expected, given, message in cases:
        with pytest.raises(ValueError, match=message):
            check_like(expected, given, "x")


def _with(state, **changes):
    state = dict(state)
    for key, value in changes.items():
        if value is _MISSING:
            del state[key]
        else:
            state[key] = value
    return state


_MISSING = object()


def test_bad_loop_states_are_refused_by_name_and_change_nothing():
    tuner, batches = tuner_for(glocal.Local(window=4))
    for i in range(2):
        tuner.step(batches[i])
    state = tuner.state_dict()
    engine = dict(state["engine"], inner_state=[])
    cases = [
        (_with(state, step_count=_MISSING, fallbacks=_MISSING),
         r"^state: missing step_count, fallbacks \(not a state_dict\(\) of this kind of loop\)$"),
        # momentum SGD: one buffer per parameter
        (_with(state, engine=engine), r"^state\['engine'\]\['inner_state'\]: expected 4 entries, got 0$"),
        (_with(state, step_count=True), r"^state\['step_count'\]=True: expected an integer >= 0$"),
        (_with(state, step_count=2.5), r"^state\['step_count'\]=2.5: expected an integer >= 0$"),
        (_with(state, divergences=-1), r"^state\['divergences'\]=-1: expected an integer >= 0$"),
        (_with(state, steps_in_window=4), r"^state\['steps_in_window'\]=4: expected < the window \(4\)$"),
    ]
    other, _ = tuner_for(glocal.Local(window=4), seed=3)
    raw = other.space.raw.detach().clone()
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            other.load_state_dict(bad)
    assert torch.equal(other.space.raw, raw) and other.step_count == 0
    other.load_state_dict(state)
    assert other.step_count == 2


def test_steps_in_window_is_checked_against_a_one_step_window_and_not_for_fixed():
    one, batches = tuner_for(glocal.Local(window=1))
    with pytest.raises(ValueError, match=r"^state\['steps_in_window'\]=1: expected < the window \(1\)$"):
        one.load_state_dict(_with(one.state_dict(), steps_in_window=1))
    fixed, _ = tuner_for(glocal.Fixed())
    fixed.step(batches[0])
    again, _ = tuner_for(glocal.Fixed(), seed=3)
    again.load_state_dict(fixed.state_dict())  # window 0: steps_in_window stays 0 and is valid
    assert again.step_count == 1


def test_counters_survive_a_checkpoint_and_old_checkpoints_start_them_at_zero():
    tuner, batches = tuner_for(glocal.Local(window=2), clip_norm=None, hyper_lr=1e6)  # phi runs into its bounds
    tuner.step(batches[0])
    with torch.no_grad():
        tuner.model[0].weight[0, 0] = math.nan  # before any update: restored, not reverted
    tuner.step(batches[1])
    for i in range(2, 6):
        tuner.step(batches[i])
    assert tuner.bound_hits >= 1 and tuner.restored_faults == 1
    state = tuner.state_dict()
    resumed, _ = tuner_for(glocal.Local(window=2), clip_norm=None, hyper_lr=1e6, seed=3)
    resumed.load_state_dict(state)
    assert (resumed.bound_hits, resumed.restored_faults) == (tuner.bound_hits, 1)
    older = {k: v for k, v in state.items() if k not in ("bound_hits", "restored_faults")}
    resumed.load_state_dict(older)  # written before these counters existed
    assert (resumed.bound_hits, resumed.restored_faults) == (0, 0)


def test_a_tuned_run_continues_from_its_checkpoint_without_tuning():
    """A Local run's checkpoint loads into a Fixed Tuner (no hyper-optimizer): model, phi and steps carry over."""
    tuner, batches = tuner_for(glocal.Local(window=2))
    for i in range(3):
        tuner.step(batches[i])
    model, _, _ = problem(seed=3)
    space = glocal.HyperSpace(dtype=torch.float64, lr=glocal.Log(0.05), momentum=glocal.Logit(0.5))
    fixed = glocal.Tuner(model, glocal.optim.SGD(momentum=0.5), space, F.cross_entropy, F.cross_entropy,
                         glocal.Fixed())
    assert fixed.hyper_optimizer is None
    fixed.load_state_dict(tuner.state_dict())
    assert fixed.step_count == 3 and torch.equal(fixed.space.raw, tuner.space.raw)
    for p, q in zip(fixed.model.parameters(), tuner.model.parameters(), strict=True):
        assert torch.equal(p, q)
    fixed.step(batches[3])
    assert torch.equal(fixed.space.raw, tuner.space.raw)  # not tuned any more
    # nor judged for divergence (there is no update to undo), even far above the checkpoint's reference loss
    state = dict(tuner.state_dict(), reference_loss=1e-3)
    fixed.load_state_dict(state)
    record = fixed.step(batches[4])
    assert record["train_loss"] > 100 * 1e-3
    assert not record.get("diverged") and fixed.divergences == 0
    # and a skipped step does not undo the tuned run's last update: a Fixed run never changes phi
    assert state["raw_before_update"] is not None
    fixed.load_state_dict(state)
    x, y = batches[5]
    assert fixed.step((torch.full_like(x, math.nan), y)).get("skipped")
    assert fixed.reverted_updates == 0 and torch.equal(fixed.space.raw, tuner.space.raw)


def test_bad_tuner_states_are_refused_by_name():
    tuner, batches = tuner_for(glocal.Local(window=2))
    tuner.step(batches[0])
    tuner.step(batches[1])
    state = tuner.state_dict()
    model = state["model"]
    extra = {**model, "a": 1, "b": 1, "c": 1, "d": 1}
    wrong = {**model, "2.weight": torch.zeros(1, 1, dtype=torch.float64)}
    cases = [
        ({k: v for k, v in state.items() if k != "rng"}, r"^state: missing 'rng' \(not a Tuner.state_dict\(\)\)$"),
        (dict(state, model={}), r"^state\['model'\]: not this model's state_dict \(missing \['0.bias', '0.weight', "
                                r"'2.bias'\], unexpected \[\]\)$"),
        (dict(state, model=extra), r"^state\['model'\]: not this model's state_dict \(missing \[\], unexpected "
                                   r"\['a', 'b', 'c'\]\)$"),
        (dict(state, model=["extra"]), r"^state\['model'\]: not this model's state_dict \(missing \[\], "
                                          r"unexpected \[\]\)$"),
        (dict(state, model=wrong), r"^state\['model'\]\['2.weight'\]: expected a tensor of shape \(3, 12\)"),
        (dict(state, rng="seed 0"), r"^state\['rng'\]: expected torch.get_rng_state\(\) output$"),
        (dict(state, rng=state["rng"].to(torch.int16)), r"^state\['rng'\]: expected torch.get_rng_state\(\) output$"),
        (dict(state, rng=state["rng"][:10]), r"^state\['rng'\]: expected torch.get_rng_state\(\) output$"),
    ]
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            tuner.load_state_dict(bad)
    tuner.load_state_dict(state)


def test_reverse_mode_is_checkpointed_at_window_ends_only():
    tuner, batches = tuner_for(glocal.Local(window=2, mode="reverse"))
    tuner.step(batches[0])
    with pytest.raises(RuntimeError, match=r"^a reverse-mode run can be checkpointed only at a window's end$"):
        tuner.state_dict()
    tuner.step(batches[1])
    assert tuner.state_dict()["steps_in_window"] == 0


def test_a_checkpoint_does_not_grow_with_the_run():
    tuner, batches = tuner_for(glocal.Local(window=2))
    tuner.step(batches[0])
    state = tuner.state_dict()
    tuner.step(batches[1])
    tuner.step(batches[2])
    assert state["history"]["train_loss"] == tuner.history.train_loss[:1]


def test_bad_history_raw_before_update_and_hyper_optimizer_states_are_refused_by_name():
    tuner, batches = tuner_for(glocal.Local(window=2))
    tuner.step(batches[0])
    tuner.step(batches[1])
    state = tuner.state_dict()
    assert state["buffer"] == [] and state["raw_before_update"] is not None
    history = {k: v for k, v in state["history"].items() if k != "windows"}
    hyper = state["hyper_optimizer"]
    groups = r"^state\['hyper_optimizer'\]: its parameter groups do not match this hyper_optimizer$"
    cases = [
        (dict(state, raw_before_update=torch.zeros(5, dtype=torch.float64)),
         r"^state: buffer/raw_before_update entry 0: expected a tensor of shape \(2,\)$"),
        (dict(state, history=history), r"^state\['history'\]: expected the keys \['train_loss', 'val_loss', "
                                       r"'val_steps', 'windows'\]$"),
        (dict(state, history=[]), r"^state\['history'\]: expected the keys"),
        (dict(state, hyper_optimizer=dict(hyper, param_groups=hyper["param_groups"] * 2)), groups),
        (dict(state, hyper_optimizer={}), groups),
        (dict(state, hyper_optimizer="adam"), groups),
    ]
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            tuner.load_state_dict(bad)
    tuner.load_state_dict(state)
