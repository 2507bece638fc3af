"""Paired rounds with fake paths and a fake clock: the design, the interval, when rounds stop, and the verdicts."""

import itertools

import pytest

from cbmir.bench.rounds import Budget, Ratio, figures, instability, judge, quantile_ci, rel_noise, run_rounds


class Machine:
    """A fake machine: each path's cost times the round's load, a clock that only the paths advance."""

    def __init__(self, costs: dict[str, float], loads: list[float]):
        self.costs, self.loads, self.now, self.calls = costs, itertools.cycle(loads), 0.0, []
        self.load = next(self.loads)

    def path(self, name: str):
        def run() -> float:
            self.calls.append(name)
            if len(self.calls) % len(self.costs) == 1 and len(self.calls) > 1:
                self.load = next(self.loads)  # the load changes between rounds, never inside one
            seconds = self.costs[name] * self.load
            self.now += seconds
            return seconds

        return run

    def clock(self) -> float:
        return self.now


def test_a_known_ratio_is_recovered_exactly_under_drifting_load_in_rotating_order():
    m = Machine({"pipeline": 1.0, "model": 0.8, "conventional": 2.0}, loads=[1.0, 3.0, 1.5, 5.0])
    ratios = [
        Ratio("pipeline_efficiency", "pipeline", "model"),
        Ratio("speedup_vs_conventional", "pipeline", "conventional"),
    ]
    out = run_rounds({n: m.path(n) for n in m.costs}, ratios, Budget(6, 100, 1e9), clock=m.clock)
    # every per-round ratio is exact although the load moves 5x between rounds: the interval collapses at once
    assert out["rounds"] == 6 and out["stop"] == "converged"
    assert out["samples"]["pipeline_efficiency"] == pytest.approx([0.8] * 6)
    assert out["samples"]["speedup_vs_conventional"] == pytest.approx([2.0] * 6)
    eff = out["ratios"]["pipeline_efficiency"]
    assert eff["value"] == pytest.approx(0.8) and eff["ci"] == pytest.approx([0.8, 0.8]) and eff["converged"]
    assert eff["noise"] == pytest.approx(0.0)
    # round r starts with path r mod 3
    assert m.calls[:9] == ["pipeline", "model", "conventional", "model", "conventional", "pipeline"] + [
        "conventional",
        "pipeline",
        "model",
    ]
    # while each path's own timings moved 5x with the load
    assert max(out["seconds"]["model"]) / min(out["seconds"]["model"]) == pytest.approx(5.0)


def test_noisy_rounds_stop_at_the_budget_with_an_honest_interval():
    m = Machine({"fast": 1.0, "slow": 2.0}, loads=[1.0])
    flip = itertools.cycle([1.0, 1.5])  # the slow path alternates 2 s and 3 s: ratios 2, 3, 2, 3, ...

    def slow() -> float:
        m.calls.append("slow")
        s = 2.0 * next(flip)
        m.now += s
        return s

    out = run_rounds(
        {"fast": m.path("fast"), "slow": slow}, [Ratio("r", "fast", "slow")], Budget(6, 100, 20.0), clock=m.clock
    )
    # rounds cost 3, 4, 3, 4, ... s: after 6 rounds 21 s >= 20 s, so the budget stops them there
    assert out["rounds"] == 6 and out["stop"] == "budget" and out["wall_s"] == pytest.approx(21.0)
    s = out["ratios"]["r"]
    assert s["value"] == pytest.approx(2.5) and s["ci"] == pytest.approx([2.0, 3.0])
    assert s["rel_halfwidth"] == pytest.approx(0.2) and not s["converged"]
    fig = figures(out, work={"fast": 10.0, "slow": 10.0}, targets={"r": 2.2}, precision=0.03)
    assert fig["r"] == pytest.approx(2.5) and fig["r_ci"] == pytest.approx([2.0, 3.0])
    assert fig["rate_per_s"]["fast"] == pytest.approx(10.0) and fig["rate_per_s"]["slow"] == pytest.approx(
        25 / 6
    )  # median of 5, 10/3
    assert not fig["stable"] and fig["rounds"] == 6
    assert fig["unstable_reasons"] == [
        "r: interval ±20.0% after 6 rounds (wanted ±3%; stopped: budget)",
        "r: interval [2.000, 3.000] contains the target 2.2",
    ]
    assert fig["samples"]["r"] == pytest.approx([2.0, 3.0] * 3) and len(fig["samples"]["rate_per_s.slow"]) == 6


def test_the_budget_is_kept_on_a_busy_machine_after_one_rotation():
    m = Machine({"a": 5.0, "b": 5.0, "c": 10.0}, loads=[1.0])
    out = run_rounds({n: m.path(n) for n in m.costs}, [Ratio("r", "a", "c")], Budget(6, 100, 1.0), clock=m.clock)
    # the budget is spent in the first round, yet every path leads one round before the rounds stop
    assert out["rounds"] == 3 and out["stop"] == "budget" and m.calls[:4] == ["a", "b", "c", "b"]
    assert out["ratios"]["r"]["value"] == pytest.approx(2.0) and out["ratios"]["r"]["ci"] is None
    reasons = instability(out["ratios"], {}, rounds=3, stop="budget", precision=0.03)
    assert reasons == ["r: no 95 % interval from 3 rounds"]


def test_rounds_never_exceed_max_rounds():
    m = Machine({"a": 1.0, "b": 1.0}, loads=[1.0])
    calls = itertools.count()
    out = run_rounds(
        {"a": m.path("a"), "b": lambda: 1.0 + next(calls) % 3}, [Ratio("r", "a", "b")], Budget(2, 4, 1e9), clock=m.clock
    )
    assert out["rounds"] == 4 and out["stop"] == "max_rounds"
    with pytest.raises(ValueError, match="min_rounds"):
        Budget(7, 6, 10.0).check()


def test_median_interval_is_the_binomial_order_statistics():
    # n = 10: [x(2), x(9)] covers the median with 1 - 2 * 11/1024 = 97.9 %; [x(3), x(8)] only 89 %
    assert quantile_ci(list(range(1, 11))) == [2.0, 9.0]
    assert quantile_ci([6.0, 1.0, 5.0, 2.0, 4.0, 3.0]) == [1.0, 6.0]  # n = 6: min-max covers 96.9 %
    assert quantile_ci([1.0, 2.0, 3.0, 4.0, 5.0]) is None  # n = 5: even min-max covers only 93.8 %
    assert quantile_ci(list(range(1, 101)), 0.95) == [90.0, 100.0]
    assert rel_noise([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx((4.0 - 2.0) / 3.0)


def test_a_target_is_met_missed_or_not_resolved_by_its_interval():
    assert judge([0.91, 0.95], 0.90) == "met"
    assert judge([0.80, 0.89], 0.90) == "missed"
    assert judge([0.85, 0.95], 0.90) == "not resolved"
    assert judge(None, 0.90) == "not resolved"
    assert judge([30.0, 45.0], 50.0, higher_is_better=False) == "met"  # latency under 50 ms
    assert judge([55.0, 60.0], 50.0, higher_is_better=False) == "missed"
    assert judge([45.0, 60.0], 50.0, higher_is_better=False) == "not resolved"


def test_an_efficiency_above_one_beyond_its_interval_is_unstable_not_a_pass():
    tight = {"value": 1.13, "ci": [1.10, 1.16], "rel_halfwidth": 0.027, "noise": 0.05, "converged": True}
    reasons = instability(
        {"pipeline_efficiency": tight}, {"pipeline_efficiency": 0.9}, rounds=20, stop="converged", precision=0.03
    )
    assert reasons == [
        "pipeline_efficiency above 1 beyond its interval [1.100, 1.160]: the pipeline cannot outrun its own model; "
        "the model-only runs were disturbed"
    ]
    fine = {**tight, "value": 0.95, "ci": [0.93, 0.97]}
    assert (
        instability(
            {"pipeline_efficiency": fine}, {"pipeline_efficiency": 0.9}, rounds=9, stop="converged", precision=0.03
        )
        == []
    )
