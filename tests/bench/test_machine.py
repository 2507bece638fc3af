"""What a run records about its machine, and the CPU time split between this process and the others."""

import time

from cbmir.bench.machine import Disturbance, busy_seconds, machine


def spin(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_own_cpu_time_is_not_counted_as_other_processes():
    with Disturbance() as d:
        spin(0.6)
    r = d.record
    assert r["own_cpu_s"] >= 0.55 and r["wall_s"] >= 0.55
    # the machine's non-idle time over the block includes this process's 0.6 s; what is left is the others'
    assert r["other_cpu_s"] is not None and r["other_cpu_s"] >= 0 and 0 <= r["other_cpu_share"] <= 1
    assert len(r["load_average"]) == 2 and busy_seconds() > 0


def test_machine_names_cpu_threads_and_commit():
    import torch

    m = machine()
    assert m["cpu_model"] and m["cpus"] >= 1 and m["torch_threads"] == torch.get_num_threads()
    assert m["commit"] and len(m["commit"].split("+")[0]) == 40  # the tests run in a git checkout
    assert "governor" in m and isinstance(m["thread_variables"], dict)
