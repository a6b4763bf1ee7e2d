"""The goals a run is checked against (issue 18): in-process CPU per request as a multiple
of hello-world's, throughput as a share of hello-world's and of the baselines', p99, and the
soak's memory growth; each met, or missed by how much."""

from __future__ import annotations

from typing import Any

#: Issue 18's targets: in-process CPU per request as a multiple of hello-world's (at most),
#: throughput as a share of hello-world's (at least), p99 in ms (at most).
P99_TARGET_MS = 20.0
INPROC_TARGETS = {"mint": 2.9, "verify": 3.1, "redeem": 3.5}
SHARE_TARGETS = {("sqlite", "mint"): 0.30, ("sqlite", "redeem"): 0.30, ("sqlite", "verify"): 0.40}
SHARE_TARGETS |= {("postgresql", "mint"): 0.35, ("postgresql", "redeem"): 0.35}
SHARE_TARGETS |= {("postgresql", "verify"): 0.40}
NAIVE_TARGETS = {"sqlite": 1.5, "postgresql": 1.2}
LEAN_WITHIN = 0.15


def _check(what: str, value: float | None, goal: float, at_most: bool) -> dict[str, Any] | None:
    if value is None:
        return None
    met = value <= goal if at_most else value >= goal
    gap = (value / goal - 1) if at_most else (1 - value / goal)
    return {
        "what": what,
        "value": value,
        "goal": f"{'<=' if at_most else '>='} {goal}",
        "met": met,
        "missed_by": None if met else f"{gap:.0%}",
    }


def check_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    checks: list[dict[str, Any] | None] = []
    inproc = result.get("inproc")
    if inproc:
        for scenario, goal in INPROC_TARGETS.items():
            ratio = inproc["ratio"].get(f"linksvc/{scenario}")
            checks.append(_check(f"in-process CPU, {scenario} / hello", ratio, goal, True))
            lean = inproc["ratio"].get(f"lean/{scenario}")
            if ratio is not None and lean:
                checks.append(
                    _check(
                        f"in-process CPU, {scenario}: linksvc / lean",
                        round(ratio / lean, 3),
                        1 + LEAN_WITHIN,
                        True,
                    )
                )
    for (db_label, scenario), goal in SHARE_TARGETS.items():
        ratio = result["ratios"].get(f"linksvc-{db_label}/{scenario}")
        checks.append(_check(f"{scenario} rps / hello rps on {db_label}", ratio, goal, False))
        if scenario == "verify":
            continue
        vs = result["vs_baselines"]
        checks.append(
            _check(
                f"{scenario} rps, linksvc / naive on {db_label}",
                vs.get(f"linksvc-{db_label}/{scenario} vs naive"),
                NAIVE_TARGETS[db_label],
                False,
            )
        )
        checks.append(
            _check(
                f"{scenario} rps, linksvc / lean on {db_label}",
                vs.get(f"linksvc-{db_label}/{scenario} vs lean"),
                1 - LEAN_WITHIN,
                False,
            )
        )
        m = result["medians"].get(f"linksvc-{db_label}/{scenario}")
        checks.append(
            _check(
                f"{scenario} p99 on {db_label} (ms)",
                m["p99_ms"] if m else None,
                P99_TARGET_MS,
                True,
            )
        )
    if "soak" in result:
        growth = max(result["soak"]["growth_mb"].values())
        checks.append(
            _check(
                f"RSS growth per worker over the {result['soak']['seconds']} s soak (MB)",
                growth,
                5.0,
                True,
            )
        )
    return [c for c in checks if c is not None]
