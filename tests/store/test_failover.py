"""Failover of the ledger's PostgreSQL under a redemption load (pg_auto_failover).

A formation of our own (tests/autofailover.py): a monitor, primary ``a`` and standby ``b``.
Two linksvc nodes (gunicorn masters) reach them through one multi-host URL with
``target_session_attrs=read-write``. A redemption load runs across both nodes; then the
standby is made to lag (the primary's WAL sender is stopped, as a slow network or a busy
standby would), the primary's postmaster is SIGKILLed with the rest of its host, and the
monitor promotes the standby.

With synchronous replication (the production shape) the test proves: every link answered
200 is ``consumed`` on the new primary, none was answered 200 twice (replays afterwards all
answer 409), every other answer was 409 or a 503 problem with ``Retry-After``, and both nodes
serve again with the same worker processes.

With asynchronous replication — the control — the same fault loses consumptions that were
answered 200: the test asserts that it does and that those used links redeem a second time,
which is both the reason for synchronous replication and the proof that the fault the
synchronous test survives is one that can break single use.
"""

from __future__ import annotations

import collections
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support import autofailover
from tests.support.env import base_env
from tests.support.servers import Server, prepare_instance, start_gunicorn
from tests.system.test_production import _mint, _workers

pytestmark = pytest.mark.slow

CONNECT_TIMEOUT = 2
LINKS = 500
STALL_SECONDS = 1.5


@dataclass
class Answer:
    start: float
    end: float
    jti: str
    node: int
    status: int
    retry_after: str | None
    code: str


class Load:
    """Redeem every link once, round robin over the nodes; a link answered 503 goes back in
    the queue (a client retrying), so the load lasts through the failover."""

    def __init__(self, nodes: list[Server], headers: dict[str, str], links: list[dict]) -> None:
        self.nodes, self.headers = nodes, headers
        self.queue = collections.deque(links)
        self.answers: list[Answer] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(4)]

    def _run(self, i: int) -> None:
        session = requests.Session()
        turn = i
        while not self.stop.is_set():
            with self.lock:
                link = self.queue.popleft() if self.queue else None
            if link is None:
                time.sleep(0.05)
                continue
            node = turn % len(self.nodes)
            turn += 1
            start = time.monotonic()
            try:
                r = session.post(
                    f"{self.nodes[node].url}/api/v1/links/redeem",
                    json={"token": link["token"], "purpose": "magic_link"},
                    headers=self.headers,
                    timeout=30,
                )
                status, retry_after = r.status_code, r.headers.get("Retry-After")
                code = r.json().get("code", "") if status != 200 else ""
            except requests.RequestException as exc:  # fails the status assertions
                status, retry_after, code = 0, None, type(exc).__name__
            with self.lock:
                self.answers.append(
                    Answer(start, time.monotonic(), link["jti"], node, status, retry_after, code)
                )
                if status == 503:
                    self.queue.append(link)
            time.sleep(0.05)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)

    def wins(self) -> collections.Counter[str]:
        with self.lock:
            return collections.Counter(a.jti for a in self.answers if a.status == 200)


def _wait(predicate: Any, timeout: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _ready(node: Server) -> int:
    try:
        return requests.get(f"{node.url}/readyz", timeout=15).status_code
    except requests.RequestException:
        return 0


@pytest.mark.parametrize("synchronous", [True, False], ids=["synchronous", "asynchronous"])
def test_failover_under_redemption_load(
    tmp_path: Path, synchronous: bool, record_property: Any
) -> None:
    with autofailover.formation(synchronous=synchronous) as f:
        env = base_env(
            tmp_path / "instance",
            f.url("a", "b"),
            LINKSVC_DB_CONNECT_TIMEOUT=str(CONNECT_TIMEOUT),
        )
        creds = prepare_instance(env)
        headers = {"Authorization": f"Bearer {creds['api_key']}"}
        nodes = [
            start_gunicorn(
                {**env, "LINKSVC_INSTANCE_PATH": str(tmp_path / f"node-{i}")},
                workers=2,
                log_path=tmp_path / f"node-{i}.log",
            )
            for i in (1, 2)
        ]
        try:
            workers_before = [_workers(n) for n in nodes]
            links = _mint(nodes[0], headers, LINKS)
            with Load(nodes, headers, links) as load:
                _wait(lambda: len(load.wins()) >= 40, 60, "redemptions before the fault")
                # The standby falls behind: the primary's WAL sender stops sending.
                walsenders = f.walsender_pids("a")
                assert walsenders, "the standby is not streaming from the primary"
                for pid in walsenders:
                    os.kill(pid, signal.SIGSTOP)
                stalled_at = time.monotonic()
                time.sleep(STALL_SECONDS)
                killed_at = time.monotonic()
                f.kill_node("a")
                promotion = _wait(
                    lambda: f.states().get("b", ("", ""))[0] == "wait_primary",
                    90,
                    "the monitor to promote the standby",
                )
                recovered = _wait(
                    lambda: all(_ready(n) == 200 for n in nodes), 60, "both nodes ready again"
                )
                _wait(lambda: not load.queue, 90, "the load to answer every link")
                time.sleep(1)  # the last requests in flight
            answers = list(load.answers)
            wins = load.wins()
            # The ledger as the new primary has it, before anything else touches it.
            with f.connect("b") as conn:
                assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
                states = dict(conn.execute("SELECT jti, state FROM links").fetchall())

            # Afterwards: replay every link answered 200, on both nodes.
            replays: dict[str, list[int]] = {}
            for jti in wins:
                token = next(link["token"] for link in links if link["jti"] == jti)
                replays[jti] = [
                    requests.post(
                        f"{n.url}/api/v1/links/redeem",
                        json={"token": token, "purpose": "magic_link"},
                        headers=headers,
                        timeout=10,
                    ).status_code
                    for n in nodes
                ]
            fresh = [_mint(n, headers, 1, subject=f"after-{i}")[0] for i, n in enumerate(nodes)]
            fresh_redeemed = [
                requests.post(
                    f"{n.url}/api/v1/links/redeem",
                    json={"token": link["token"], "purpose": "magic_link"},
                    headers=headers,
                    timeout=10,
                ).status_code
                for n, link in zip(nodes, fresh, strict=True)
            ]
            workers_after = [_workers(n) for n in nodes]
            masters_alive = [n.proc.poll() is None for n in nodes]
        finally:
            for n in nodes:
                n.stop()
        logs = [n.log() for n in nodes]

    acknowledged_in_stall = {
        a.jti for a in answers if a.status == 200 and stalled_at + 0.2 < a.start < killed_at
    }
    lost = sorted(jti for jti in wins if states.get(jti) != "consumed")
    reopened = sorted(jti for jti, codes in replays.items() if 200 in codes)
    statuses = collections.Counter(a.status for a in answers)
    report = (
        f"\n{'synchronous' if synchronous else 'asynchronous'} replication: "
        f"{len(answers)} redemptions ({dict(statuses)}), standby promoted "
        f"{promotion:.1f}s after the kill, nodes ready {recovered:.1f}s later; "
        f"{len(acknowledged_in_stall)} answered 200 while the standby lagged; "
        f"{len(lost)} consumptions answered 200 lost in the failover, {len(reopened)} used "
        "links redeemed again afterwards"
    )
    print(report)
    record_property("failover", report.strip())

    # What holds whatever the replication mode.
    assert set(statuses) <= {200, 409, 503}, statuses
    for a in answers:
        if a.status == 503:
            assert a.code == "unavailable" and a.retry_after, a
    assert max(wins.values()) == 1, "a link was answered 200 twice during the load"
    assert statuses[503], "the failover was not seen by the load"
    assert masters_alive == [True, True] and workers_after == workers_before
    assert fresh_redeemed == [200, 200]
    after = [a for a in answers if a.start > killed_at + promotion + recovered]
    assert {a.node for a in after if a.status == 200} == {0, 1}, "both nodes serve again"
    assert all(s in ("issued", "consumed") for s in states.values())
    for log in logs:
        assert "Traceback" not in log

    if synchronous:
        # Nothing was answered 200 while the standby could not confirm it: the commits waited.
        assert not acknowledged_in_stall, acknowledged_in_stall
        assert lost == [] and reopened == []
        assert all(codes == [409, 409] for codes in replays.values())
        # Every link ended consumed; one never answered 200 had its commit confirmed by the
        # standby while the answer was lost with the primary, and its retry says `used`.
        assert {states[link["jti"]] for link in links} == {"consumed"}
        for link in links:
            if link["jti"] not in wins:
                assert any(a.jti == link["jti"] and a.code == "used" for a in answers), link["jti"]
    else:
        # The control: the stall is a fault that loses acknowledged consumptions when the
        # standby is not synchronous, and a lost consumption is a used link that opens again.
        assert acknowledged_in_stall, "asynchronous commits should not wait for the standby"
        assert set(lost) >= acknowledged_in_stall
        assert reopened == lost
