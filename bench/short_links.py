"""In-process CPU of a short link's redemption against a JWT link's (issue 23).

One app on SQLite in /dev/shm (no fsync: the CPU in Python is what differs), two clients,
one per link format. A page redemption is the press of the confirmation page's button
(``POST /l/<link>``, the page opened beforehand, untimed); the service redemption is
``LinkService.redeem`` itself, a handle or a JWT, without Flask. Blocks of 20 of each
alternate (the machine is shared: ratios of interleaved blocks, not rates, are what hold);
``time.process_time`` per block; the median over the blocks is printed.

    .venv/bin/python -m bench.short_links [--blocks 40]
"""

from __future__ import annotations

import argparse
import base64
import logging
import os
import re
import secrets
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

REDIRECT = "http://127.0.0.1:5001/callback"
BLOCK = 20
CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')


def _secret() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=40)
    args = parser.parse_args()

    from linksvc import create_app
    from linksvc.clients import registry as clients
    from linksvc.links import keys, service
    from linksvc.services import services
    from linksvc.store import db, migrate

    workdir = Path(tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    app = create_app(
        {
            "LINKSVC_ENV": "test",
            "LINKSVC_INSTANCE_PATH": str(workdir),
            "LINKSVC_DATABASE_URL": f"sqlite:///{workdir / 'linksvc.db'}",
            "LINKSVC_KEY_ENCRYPTION_KEY": _secret(),
            "LINKSVC_SECRET_KEY": _secret(),
            "LINKSVC_LOG_LEVEL": "info",
            "LINKSVC_PAGE_RATE_LIMIT": "100000000 per minute",
        }
    )
    for h in logging.getLogger("linksvc").handlers:
        h.stream = open(os.devnull, "w")  # type: ignore[attr-defined]
    svc: service.LinkService = services(app).links
    migrate.upgrade(svc.engine)
    now = int(time.time())
    users: dict[str, Any] = {}
    with db.write(svc.engine) as conn:
        keys.ensure_keys(conn, app.config["LINKSVC"].key_encryption_key, now)
        for fmt in ("jwt", "short"):
            users[fmt] = clients.create(
                conn,
                f"bench-{fmt}",
                purposes=["magic_link"],
                redirect_uris=[REDIRECT],
                mint_limit="100000000 per minute",
                subject_limit="100000000 per minute",
                link_format=fmt,
                now=now,
            )
    counter = 0

    def mint(fmt: str) -> Any:
        nonlocal counter
        counter += 1
        return svc.mint(users[fmt][0], purpose="magic_link", subject=f"user-{counter}")

    def page_block(fmt: str) -> float:
        """CPU of BLOCK presses of fresh links, each page opened first (untimed)."""
        ready = []
        for _ in range(BLOCK):
            browser = app.test_client()
            path = "/l/" + mint(fmt).url.rsplit("/l/", 1)[-1]
            page = browser.get(path)
            ready.append((browser, path, CSRF_RE.search(page.get_data(as_text=True)).group(1)))  # type: ignore[union-attr]
        start = time.process_time()
        for browser, path, csrf in ready:
            resp = browser.post(path, data={"csrf": csrf})
            if resp.status_code != 303:
                raise RuntimeError(resp.get_data()[:300])
        return time.process_time() - start

    def service_block(fmt: str) -> float:
        """CPU of BLOCK ``LinkService.redeem`` calls of fresh links, as a page gives them."""
        links = [mint(fmt) for _ in range(BLOCK)]
        given = [svc.page_link(m.url.rsplit("/l/", 1)[-1]) for m in links]
        start = time.process_time()
        for link in given:
            svc.redeem(link, purposes=("magic_link",), audience=None, via="page")
        return time.process_time() - start

    for name, block in (("page press", page_block), ("LinkService.redeem", service_block)):
        block("jwt"), block("short")  # warm-up
        ratios, per = [], {"jwt": [], "short": []}
        for i in range(args.blocks):
            order = ("jwt", "short") if i % 2 == 0 else ("short", "jwt")
            got = {fmt: block(fmt) for fmt in order}
            ratios.append(got["short"] / got["jwt"])
            for fmt in got:
                per[fmt].append(got[fmt] / BLOCK * 1e6)
        print(
            f"{name}: short/jwt CPU ratio median {statistics.median(ratios):.3f} "
            f"(quartiles {statistics.quantiles(ratios, n=4)[0]:.3f}-"
            f"{statistics.quantiles(ratios, n=4)[2]:.3f}); per request "
            f"jwt {statistics.median(per['jwt']):.0f} µs, "
            f"short {statistics.median(per['short']):.0f} µs"
        )
    svc.engine.dispose()


if __name__ == "__main__":
    main()
