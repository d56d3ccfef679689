"""Successive halving decided in trial order: the same stops whatever order the results arrive in."""

import random

import pytest

from pipeline.cluster.halving import Decision, SuccessiveHalving, percentile, rungs

# Each trial's score after each epoch (lower is better), 8 epochs: rungs at 2 and 6 epochs.
CURVES = [
    [0.50, 0.40, 0.35, 0.30, 0.30, 0.28, 0.27, 0.27],
    [0.60, 0.55, 0.50, 0.45, 0.40, 0.35, 0.30, 0.29],
    [0.45, 0.30, 0.29, 0.28, 0.27, 0.26, 0.25, 0.25],
    [0.70, 0.65, 0.60, 0.55, 0.50, 0.45, 0.40, 0.35],
    [0.40, 0.35, 0.33, 0.32, 0.31, 0.31, 0.30, 0.29],
    [0.35, 0.28, 0.27, 0.26, 0.25, 0.25, 0.24, 0.24],
    [0.55, 0.50, 0.20, 0.19, 0.18, 0.17, 0.16, 0.15],
    [0.33, 0.31, 0.30, 0.29, 0.28, 0.27, 0.26, 0.25],
    [0.90, 0.80, 0.70, 0.60, 0.50, 0.40, 0.30, 0.20],
]


def best_so_far(curve, epochs_run):
    return min(curve[:epochs_run])


def sequential(curves):
    """Epochs each trial runs when the trials run one after the other."""
    halving = SuccessiveHalving(rungs(8, 2, 3), 3)
    ran = []
    for trial, curve in enumerate(curves):
        epochs = 0
        for epochs in range(1, len(curve) + 1):
            decision = halving.judge(trial, epochs, best_so_far(curve, epochs))
            assert decision is not Decision.WAIT  # nothing earlier is still running
            if decision is Decision.STOP:
                break
        halving.end(trial, epochs)
        ran.append(epochs)
    return ran


def interleaved(curves, rng, concurrency):
    """Epochs each trial runs when up to ``concurrency`` trials run at once and each step advances
    a randomly chosen one: the results arrive in an order decided by ``rng``."""
    halving = SuccessiveHalving(rungs(8, 2, 3), 3)
    epochs = dict.fromkeys(range(len(curves)), 0)
    running, waiting, started, ran = [], set(), 0, {}
    while started < len(curves) or running:
        while len(running) < concurrency and started < len(curves):
            running.append(started)
            started += 1
        movable = [t for t in running if t not in waiting] or running  # a waiting trial asks again
        trial = rng.choice(movable)
        if trial not in waiting:
            epochs[trial] += 1
        decision = halving.judge(trial, epochs[trial], best_so_far(curves[trial], epochs[trial]))
        waiting.discard(trial)
        if decision is Decision.WAIT:
            waiting.add(trial)
            continue
        if decision is Decision.STOP or epochs[trial] == len(curves[trial]):
            halving.end(trial, epochs[trial])
            ran[trial] = epochs[trial]
            running.remove(trial)
    return [ran[t] for t in range(len(curves))]


def test_rungs_are_those_of_one_asha_bracket():
    assert rungs(8, 2, 3) == (2, 6)
    assert rungs(6, 1, 3) == (1, 3)
    assert rungs(9, 3, 3) == (3,)
    assert rungs(1, 1, 3) == ()
    with pytest.raises(ValueError, match="reduction factor > 1"):
        rungs(8, 2, 1)


def test_percentile_interpolates_like_numpy():
    assert percentile([0.3], 33.3) == 0.3
    assert percentile([0.1, 0.4], 50) == pytest.approx(0.25)
    assert percentile([0.4, 0.1, 0.2, 0.3], 100 / 3) == pytest.approx(0.2)


def test_a_trial_is_judged_against_the_best_third_of_the_earlier_trials_at_the_rung():
    halving = SuccessiveHalving((2,), 3)
    assert halving.judge(0, 2, 0.5) is Decision.CONTINUE  # the first at a rung always goes on
    halving.end(0, 8)
    assert halving.judge(1, 1, 0.9) is Decision.CONTINUE  # not a rung
    assert halving.judge(1, 2, 0.6) is Decision.STOP  # worse than the earlier 0.5
    halving.end(1, 2)
    assert halving.judge(2, 2, 0.45) is Decision.CONTINUE  # 0.45 <= third-quantile of {0.5, 0.6}
    halving.end(2, 8)
    assert halving.judge(3, 2, 0.5) is Decision.STOP  # 0.5 > 0.483, the third-quantile of {.5, .6, .45}


def test_the_sequential_stops_follow_the_rule():
    # Trial 0 runs out; 1 is worse than 0 at epoch 2; 2 beats both; 3 is the worst; 4 beats
    # the best third; at epoch 6 trial 4 (0.31) is behind 0 and 2 (0.28, 0.26) and stops.
    assert sequential(CURVES)[:5] == [8, 2, 8, 2, 6]


@pytest.mark.parametrize("concurrency", [2, 3, len(CURVES)])
def test_the_stops_do_not_depend_on_the_order_results_arrive_in(concurrency):
    expected = sequential(CURVES)
    for seed in range(50):
        assert interleaved(CURVES, random.Random(seed), concurrency) == expected, seed


def test_a_later_trial_waits_at_a_rung_for_an_earlier_one_still_below_it():
    halving = SuccessiveHalving((2,), 3)
    assert halving.judge(0, 1, 0.5) is Decision.CONTINUE
    assert halving.judge(1, 2, 0.9) is Decision.WAIT  # trial 0 may still record a better score
    assert halving.judge(0, 2, 0.4) is Decision.CONTINUE
    assert halving.judge(1, 2, 0.9) is Decision.STOP
