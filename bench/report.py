"""What a run's result reads like: the Markdown tables (printed, and results/latest.md) and
the chart (results/latest.png)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.harness import HELLO_CONFIGS
from bench.targets import INPROC_TARGETS, P99_TARGET_MS


def print_table(result: dict[str, Any]) -> None:
    print()
    print(markdown(result))


def markdown(result: dict[str, Any]) -> str:
    """The tables for the READMEs."""
    m = result["machine"]
    c = result["config"]
    out = [
        f"Run {result['date']} on {m['nproc']} × {m['cpu']}, {m['ram_gib']} GiB RAM, Linux "
        f"{m['kernel']}, Python {m['python']}, {m['wrk']}; linksvc, naive and lean under "
        f"`gunicorn -c gunicorn.conf.py` ({c['serving']}), hello-world in its faster of "
        f"{' / '.join(HELLO_CONFIGS)}; wrk {c['connections']} connections, {c['rounds']} "
        f"interleaved rounds × {c['seconds']} s per scenario (medians of the rounds; ratio = "
        "median of the per-round ratios). Load average at start: "
        f"{', '.join(f'{x:.1f}' for x in m['loadavg_at_start'])}.",
        "",
    ]
    inproc = result.get("inproc")
    if inproc:
        out += [
            f"In-process CPU per request (Flask test client, SQLite on tmpfs, "
            f"`time.process_time`, {inproc['n']} requests × {inproc['rounds']} rounds, each "
            "cell next to its own hello-world run):",
            "",
            "| endpoint | hello | linksvc | naive | lean | linksvc / lean | target |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        hello = inproc["cpu_us"]["hello/hello"]
        for scenario in ("mint", "verify", "redeem", "exchange"):
            cells = []
            for t in ("linksvc", "naive", "lean"):
                us = inproc["cpu_us"].get(f"{t}/{scenario}")
                ratio = inproc["ratio"].get(f"{t}/{scenario}")
                cells.append(f"{us:.0f} µs ({ratio:.2f}×)" if us is not None else "-")
            lk, ln = (
                inproc["ratio"].get(f"linksvc/{scenario}"),
                inproc["ratio"].get(f"lean/{scenario}"),
            )
            out.append(
                f"| {scenario} | {hello:.0f} µs | {' | '.join(cells)} | "
                f"{f'{lk / ln:.2f}' if lk and ln else '-'} | "
                f"{f'≤ {INPROC_TARGETS[scenario]}×' if scenario in INPROC_TARGETS else '-'} |"
            )
        out.append("")
        # What a webhook client's outbox row costs (linksvc.webhooks.outbox; bench/inproc.py).
        wh = [
            (
                sc,
                inproc["cpu_us"].get(f"linksvc/{sc}"),
                inproc["cpu_us"].get(f"linksvc-webhooks/{sc}"),
            )
            for sc in ("mint", "redeem")
        ]
        if all(a and b for _, a, b in wh):
            out += [
                "With a webhook endpoint (its outbox row written with each change), CPU per "
                "request: "
                + ", ".join(
                    f"{sc} {b:.0f} µs against {a:.0f} µs ({(b / a - 1) * 100:+.1f}%)"
                    for sc, a, b in wh
                )
                + ".",
                "",
            ]
    out += [
        "| target / scenario | req/s | % of hello | vs naive | vs lean | p50 ms | p99 ms "
        "| non-2xx | RSS/worker MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, v in result["medians"].items():
        ratio = result["ratios"].get(name, 1.0 if name == "hello/hello" else None)
        naive = result["vs_baselines"].get(f"{name} vs naive")
        lean = result["vs_baselines"].get(f"{name} vs lean")
        out.append(
            f"| {name} | {v['rps']:.0f} | {f'{ratio:.0%}' if ratio is not None else '-'} "
            f"| {f'{naive:.2f}×' if naive else '-'} | {f'{lean:.2f}×' if lean else '-'} "
            f"| {v['p50_ms']:.1f} | {v['p99_ms']:.1f} | {v['non2xx']} "
            f"| {v['rss_mb_per_worker']:.0f} |"
        )
    if "soak" in result:
        s = result["soak"]
        out += [
            "",
            f"Memory: {s['seconds']} s of sustained minting on {s['database']}, after "
            f"{s['warmup_s']} s of the same (one window of the bench client's limits, which "
            "the in-memory limiter keeps a key per new subject for), RSS per worker (MB): "
            f"before the warm-up {', '.join(f'{v:.1f}' for v in s['rss_mb_before_warmup'].values())}; "
            + "; ".join(
                f"t={x['t']:.0f} s: " + ", ".join(f"{v:.1f}" for v in x["rss_mb"].values())
                for x in s["samples"]
            ),
        ]
    out += ["", "| target | value | goal | | missed by |", "|---|---:|---|---|---:|"]
    for t in result["targets"]:
        out.append(
            f"| {t['what']} | {t['value']} | {t['goal']} | "
            f"{'met' if t['met'] else '**not met**'} | {t['missed_by'] or ''} |"
        )
    return "\n".join(out) + "\n"


def draw(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["medians"])
    rps = [result["medians"][n]["rps"] for n in names]
    p99 = [result["medians"][n]["p99_ms"] for n in names]
    p50 = [result["medians"][n]["p50_ms"] for n in names]

    def color(n: str) -> str:
        if n.startswith("hello"):
            return "#888888"
        if n.startswith("naive"):
            return "#d9d9d9"
        if n.startswith("lean"):
            return "#a1d99b"
        return "#3a7bd5" if "sqlite" in n else "#e07a1f"

    colors = [color(n) for n in names]
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.5))
    ax = axes[0]
    bars = ax.bar(names, rps, color=colors)
    for bar, n in zip(bars, names, strict=False):
        r = result["ratios"].get(n)
        if r is not None:
            ax.annotate(
                f"{r:.0%}",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
            )
    ax.set_title("requests/s (median of rounds; % of hello-world)")
    ax.tick_params(axis="x", rotation=60, labelsize=7)
    ax = axes[1]
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], p50, width=0.4, label="p50", color="#9ecae1")
    ax.bar([i + 0.2 for i in x], p99, width=0.4, label="p99", color="#08519c")
    ax.axhline(P99_TARGET_MS, ls="--", color="red", lw=0.8, label="p99 target")
    ax.set_xticks(list(x), names, rotation=60, fontsize=7)
    ax.set_title("latency (ms)")
    ax.legend()
    ax = axes[2]
    inproc = result.get("inproc")
    if inproc:
        scen = ["mint", "verify", "redeem", "exchange"]
        for i, t in enumerate(("linksvc", "naive", "lean")):
            vals = [inproc["ratio"].get(f"{t}/{s}", 0) for s in scen]
            ax.bar([j + (i - 1) * 0.27 for j in range(len(scen))], vals, width=0.27, label=t)
        for j, s in enumerate(scen):
            if s in INPROC_TARGETS:
                ax.hlines(INPROC_TARGETS[s], j - 0.4, j + 0.4, colors="red", lw=1)
        ax.set_xticks(range(len(scen)), scen)
        ax.set_title("in-process CPU per request, × hello-world (red: target)")
        ax.legend()
    m = result["machine"]
    fig.suptitle(
        f"linksvc vs hello-world, naive and lean — {result['date']} — {m['nproc']} CPUs {m['cpu']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
