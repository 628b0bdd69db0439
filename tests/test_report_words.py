"""The report's plain-words paragraph is computed from the records and judged by the seed spread."""

from glocal_bench.report import in_plain_words


def _records(task, strategy, losses, wall=1.0):
    return [{"task": task, "strategy": strategy, "seed": i, "final_val_loss": v, "wall_seconds": wall}
            for i, v in enumerate(losses)]


def test_beyond_within_and_above_the_spread():
    records = (_records("a", "glocal", [1.0, 1.1], wall=4.0) + _records("a", "local", [1.5, 1.6])
               + _records("a", "fixed", [1.04, 1.06]))
    (text,) = in_plain_words(records)
    assert text.startswith("On a, the lowest mean final validation loss is glocal's (1.05)")
    assert "Glocal (1.05) is below Local (1.55) by more than the seed spread (0.071)" in text
    assert "Glocal (1.05) is within the seed spread (0.071) of the untuned run (1.05)" in text
    assert "Glocal took 4.0x the wall time of the untuned run" in text
    worse = _records("b", "glocal", [2.0, 2.1]) + _records("b", "local", [1.0, 1.1])
    assert "Glocal (2.05) is above Local (1.05) by more than the seed spread" in in_plain_words(worse)[0]


def test_one_seed_says_there_is_no_spread_and_nonfinite_runs_are_left_out():
    records = _records("c", "glocal", [1.0]) + _records("c", "local", [1.2, float("nan")])
    (text,) = in_plain_words(records)
    assert "Glocal (1) is below Local (1.2; one seed, no spread to judge by)" in text
    assert in_plain_words(_records("d", "hd", [0.5])) == ["On d, the lowest mean final validation loss is hd's (0.5)."]
