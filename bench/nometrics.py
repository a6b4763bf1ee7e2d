"""linksvc without linksvc.metrics, for measuring what the metrics cost:
`gunicorn -c gunicorn.conf.py bench.nometrics:app`. The app factory skips an optional
module that cannot be imported; ``None`` in ``sys.modules`` makes it so."""

import sys

sys.modules["linksvc.metrics"] = None  # type: ignore[assignment]

from app import app  # noqa: E402,F401
