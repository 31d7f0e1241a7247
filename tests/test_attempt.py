"""The attempt policy on a fake clock: no sockets, no timers, every outcome kind."""

from __future__ import annotations

import random

import pytest

from pldns.dns.attempt import Change, Health, Outcome, Policy, Step, margin


def policy(n: int = 2, deadline: float = 3.0, try_timeout: float = 1.0, **kw: int) -> Policy:
    return Policy(n, kw.get("max_fails", 2), kw.get("rise", 1), deadline, try_timeout,
                  random.Random(7))  # fmt: skip


def test_answer_is_delivered_from_the_first_upstream() -> None:
    pol = policy()
    plan = pol.plan(0.0)
    assert plan.next(0.0) == Step.SEND and plan.upstream == 0 and not plan.tcp
    assert plan.expires == 1.0
    assert plan.outcome(Outcome.ANSWER, b"reply", 0.01) == Step.DELIVER
    assert plan.reply == b"reply"


@pytest.mark.parametrize("no", [Outcome.SERVFAIL, Outcome.REFUSED])
def test_servfail_and_refused_move_on_and_are_not_asked_again(no: Outcome) -> None:
    pol = policy(3)
    plan = pol.plan(0.0)
    plan.next(0.0)
    asked = [plan.upstream]
    step = plan.outcome(no, b"no", 0.01)
    while step == Step.SEND:
        asked.append(plan.upstream)
        step = plan.outcome(no, b"no", 0.02)
    assert asked == [0, 1, 2], "each upstream asked once"
    if no == Outcome.REFUSED:
        assert plan.reply is None, "every upstream refused: our SERVFAIL, never their REFUSED"
    else:
        assert plan.reply == b"no", "an upstream's own SERVFAIL (it may carry an EDE)"


def test_refused_then_servfail_gives_servfail_not_the_last_rcode() -> None:
    pol = policy(2)
    plan = pol.plan(0.0)
    plan.next(0.0)
    assert plan.outcome(Outcome.SERVFAIL, b"servfail", 0.01) == Step.SEND
    assert plan.outcome(Outcome.REFUSED, b"refused", 0.02) == Step.DELIVER
    assert plan.reply == b"servfail", "the last one said REFUSED: that is not relayed"


@pytest.mark.parametrize("failure", [Outcome.TIMEOUT, Outcome.ERROR])
def test_failures_move_on_round_the_list_and_give_up_before_the_deadline(
    failure: Outcome,
) -> None:
    pol = policy(2, deadline=3.0, try_timeout=1.0)
    plan = pol.plan(10.0)
    now = 10.0
    step = plan.next(now)
    sent = []
    while step == Step.SEND:
        sent.append((plan.upstream, plan.expires))
        assert plan.expires <= 10.0 + 3.0 - margin(3.0)
        now = plan.expires if failure == Outcome.TIMEOUT else now
        assert plan.timed_out(now) == (failure == Outcome.TIMEOUT)
        step = plan.outcome(failure, None, now)
    assert plan.reply is None
    assert now < 13.0, "SERVFAIL is due before the deadline, with margin"
    assert [u for u, _ in sent][:2] == [0, 1]
    assert len(sent) <= 4


def test_margin_is_bounded() -> None:
    assert margin(3.0) == 0.3 and margin(0.1) == 0.02 and margin(1.0) == 0.1 and margin(60) == 0.3


def test_health_goes_down_after_max_fails_and_only_probes_bring_it_back() -> None:
    h = Health(max_fails=2, rise=2)
    assert h.record(Outcome.TIMEOUT, 1.0) is None
    assert h.record(Outcome.ANSWER, 1.1) is None and h.fails == 0, "an answer resets the count"
    assert h.record(Outcome.TIMEOUT, 2.0) is None
    assert h.record(Outcome.ERROR, 2.1, "udp error") is Change.DOWN
    assert not h.up and h.cause == "udp error"
    # Client outcomes do not judge a down upstream (no client query is a probe).
    assert h.record(Outcome.ANSWER, 2.2) is None and not h.up
    assert h.probed(True, 2.5) is None
    assert h.probed(False, 3.0) is None and h.good_probes == 0, "rise counts good ones in a row"
    assert h.probed(True, 3.5) is None
    assert h.probed(True, 4.0) is Change.UP
    assert h.up and h.down_for == pytest.approx(1.9) and h.last_probe == 4.0


@pytest.mark.parametrize("outcome", [Outcome.SERVFAIL, Outcome.REFUSED, Outcome.TRUNCATED])
def test_a_reply_of_any_kind_shows_the_server_alive(outcome: Outcome) -> None:
    h = Health(max_fails=2, rise=1)
    h.record(Outcome.TIMEOUT, 0.0)
    h.record(outcome, 0.1)
    assert h.record(Outcome.TIMEOUT, 0.2) is None and h.up


def test_a_million_failures_in_a_row() -> None:
    pol = policy(2)
    changes = []
    now = 0.0
    for _ in range(1_000_000):
        change = pol.record(0, False, Outcome.TIMEOUT, now)
        if change is not None:
            changes.append(change)
        now += 0.001
    assert changes == [Change.DOWN], "one state change, logged once"
    assert pol.udp[0].fails == 2, "the count stops growing once down: nothing to overflow"
    plan = pol.plan(now)
    assert plan.next(now) == Step.SEND and plan.upstream == 1, "the dead one gets no queries"
    assert pol.tcp[0].up, "UDP failures do not take TCP out"


def test_a_million_queries_with_one_dead_upstream_never_wait_on_it() -> None:
    pol = policy(2, max_fails=2)
    now = 0.0
    waits = 0
    for i in range(1_000_000):
        plan = pol.plan(now)
        step = plan.next(now)
        while step == Step.SEND:
            if plan.upstream == 0:  # dead: it times out
                waits += 1
                now = plan.expires
                pol.record(0, False, Outcome.TIMEOUT, now)
                step = plan.outcome(Outcome.TIMEOUT, None, now)
            else:
                pol.record(1, False, Outcome.ANSWER, now)
                step = plan.outcome(Outcome.ANSWER, b"ok", now)
        assert plan.reply == b"ok", i
        now += 0.0001
    assert waits == 2, "only the first max_fails queries waited on the dead upstream"


def test_flapping_upstream_is_followed_by_probes() -> None:
    pol = policy(2, max_fails=2, rise=1)
    now = 0.0
    downs = ups = 0
    for cycle in range(10_000):
        for _ in range(2):
            if pol.record(0, False, Outcome.TIMEOUT, now) is Change.DOWN:
                downs += 1
        plan = pol.plan(now)
        plan.next(now)
        assert plan.upstream == 1, cycle
        if pol.probed(0, False, True, now + 0.5) is Change.UP:
            ups += 1
        plan = pol.plan(now)
        plan.next(now)
        assert plan.upstream == 0, cycle
        now += 1.0
    assert downs == ups == 10_000


def test_all_down_picks_one_at_random_and_still_tries_the_others() -> None:
    pol = policy(4)
    for i in range(4):
        pol.record(i, False, Outcome.TIMEOUT, 0.0)
        pol.record(i, False, Outcome.TIMEOUT, 0.0)
    firsts = set()
    for _ in range(200):
        plan = pol.plan(1.0)
        plan.next(1.0)
        firsts.add(plan.upstream)
        assert sorted(plan.order) == [0, 1, 2, 3]
    assert firsts == {0, 1, 2, 3}


def test_truncated_goes_to_tcp_on_the_same_upstream_then_the_others() -> None:
    pol = policy(3)
    plan = pol.plan(0.0)
    plan.next(0.0)
    plan.outcome(Outcome.ANSWER if False else Outcome.TIMEOUT, None, 0.0)  # upstream 0 silent
    assert plan.upstream == 1
    assert plan.outcome(Outcome.TRUNCATED, b"tc", 0.1) == Step.SEND
    assert plan.tcp and plan.upstream == 1, "TCP to the upstream that truncated first"
    assert plan.outcome(Outcome.ERROR, None, 0.2) == Step.SEND and plan.upstream in (0, 2)
    assert plan.outcome(Outcome.TIMEOUT, None, 1.2) == Step.SEND
    step = plan.outcome(Outcome.ANSWER, b"whole", 1.3)
    assert step == Step.DELIVER and plan.reply == b"whole"


def test_tcp_getting_nowhere_delivers_the_truncated_reply() -> None:
    pol = policy(2)
    for i in range(2):  # TCP is down everywhere: the one that truncated is still tried
        pol.record(i, True, Outcome.ERROR, 0.0)
        pol.record(i, True, Outcome.ERROR, 0.0)
    plan = pol.plan(0.0)
    plan.next(0.0)
    assert plan.outcome(Outcome.TRUNCATED, b"tc", 0.0) == Step.SEND and plan.upstream == 0
    step = plan.outcome(Outcome.ERROR, None, 0.1)
    while step == Step.SEND:
        step = plan.outcome(Outcome.ERROR, None, 0.1)
    assert plan.reply == b"tc", "TC=1 to the client, not SERVFAIL"
    assert all(h.up for h in pol.udp), "TCP failures do not take UDP out"


def test_tcp_timeouts_stop_before_the_deadline_and_deliver_truncated() -> None:
    pol = policy(1, deadline=3.0, try_timeout=1.0)
    plan = pol.plan(0.0)
    plan.next(0.0)
    plan.outcome(Outcome.TRUNCATED, b"tc", 0.9)
    now = 0.9
    step = Step.SEND
    while step == Step.SEND:
        now = plan.expires
        step = plan.outcome(Outcome.TIMEOUT, None, now)
    assert plan.reply == b"tc" and now <= 3.0 - margin(3.0)
