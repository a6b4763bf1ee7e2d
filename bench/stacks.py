"""Call trees from py-spy's raw (folded) stacks: where a request's samples go.

py-spy samples the interpreter from outside, so a Python-heavy part costs what it costs;
a tracing profiler (pyinstrument, cProfile) adds its overhead to every call and makes the
many small calls of a request look larger than the few native ones (a signature, a
statement). ``python -m bench.inproc --sample SCENARIO`` and ``python -m bench.run --profile``
print these.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

_LINE = re.compile(r":\d+\)$")
_SITE = re.compile(r" \((?:.*/site-packages/|.*/lib/python3\.\d+/|.*/work/[^/]+/)?(.*)\)$")


def _frame(frame: str) -> str:
    """``fn (path/to/file.py:12)`` as ``fn (file.py)`` relative to its package."""
    return _SITE.sub(r" (\1)", _LINE.sub(")", frame))


def tree(paths: list[Path], root: str, depth: int = 5, floor: float = 1.0, within: str = "") -> str:
    """The inclusive share of each call under the first frame matching ``root``, down to
    ``depth`` levels, calls under ``floor`` % left out; only stacks passing through a frame
    matching ``within`` (the measured loop, not its set-up) when it is given."""
    counts: Counter[tuple[str, ...]] = Counter()
    total = 0
    for path in paths:
        for line in path.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            frames = [_frame(f) for f in stack.split(";")]
            if within and not any(within in f for f in frames):
                continue
            at = next((i for i, f in enumerate(frames) if root in f), None)
            if at is None:
                continue
            total += int(n)
            below = frames[at + 1 : at + 1 + depth]
            for d in range(1, len(below) + 1):
                counts[tuple(below[:d])] += int(n)
    lines = [f"{total} samples under {root}"]

    def show(prefix: tuple[str, ...]) -> None:
        kids = [k for k in counts if len(k) == len(prefix) + 1 and k[: len(prefix)] == prefix]
        for k in sorted(kids, key=lambda k: -counts[k]):
            share = 100 * counts[k] / max(total, 1)
            if share >= floor:
                lines.append(f"{'  ' * len(prefix)}{share:5.1f}% {k[-1]}")
                show(k)

    show(())
    return "\n".join(lines)
