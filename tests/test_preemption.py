"""The preemption watch: asked at its cadence, each notice answered once (train/preemption.py).
The two-node run that a real notice interrupts is in test_elastic.py."""

from __future__ import annotations

import time

from ray.train import PreemptionInfo

from stargan_ray.train.preemption import PreemptionWatch


def test_the_watch_asks_at_its_cadence_and_answers_each_notice_once():
    asked: list[int] = []
    deadline = int(time.time() * 1000) + 30_000
    answers = {3: None, 6: PreemptionInfo(deadline, {"n1": [1]}),
               9: PreemptionInfo(deadline, {"n1": [1]}),
               12: PreemptionInfo(deadline + 5000, {"n1": [1], "n2": [2, 3]})}
    step = 0
    watch = PreemptionWatch(3, ask=lambda: (asked.append(step), answers[step])[1])
    notices = {}
    for step in range(1, 13):
        notice = watch.poll(step)
        if notice is not None:
            notices[step] = notice
    assert asked == [3, 6, 9, 12]  # every rank asks at the same steps: a barrier
    assert sorted(notices) == [6, 12]  # step 9 repeats step 6's notice
    assert notices[6]["nodes"] == ["n1"] and notices[6]["ranks"] == [1]
    assert 25 < notices[6]["deadline_in_s"] <= 30
    assert notices[12]["ranks"] == [1, 2, 3]


def test_a_cadence_of_zero_never_asks():
    watch = PreemptionWatch(0, ask=lambda: (_ for _ in ()).throw(AssertionError("asked")))
    assert all(watch.poll(step) is None for step in range(1, 50))
