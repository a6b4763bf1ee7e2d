"""linksvc without linksvc.ops.metrics, for measuring what the metrics cost:
`gunicorn -c gunicorn.conf.py bench.nometrics:app`. A stand-in module whose ``init_app``
does nothing takes the real one's place before the app is built: no hooks, no counters."""

import sys
import types

_stub = types.ModuleType("linksvc.ops.metrics")
_stub.init_app = lambda _app: None  # type: ignore[attr-defined]
sys.modules["linksvc.ops.metrics"] = _stub

from app import app  # noqa: E402,F401
