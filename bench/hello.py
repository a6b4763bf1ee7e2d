"""The baseline: a Flask hello-world JSON endpoint, served exactly like linksvc
(`gunicorn -c gunicorn.conf.py --workers 2 bench.hello:app`)."""

from flask import Flask, jsonify

app = Flask(__name__)


@app.get("/hello")
def hello():  # type: ignore[no-untyped-def]
    return jsonify({"hello": "world"})


@app.get("/healthz")
def healthz():  # type: ignore[no-untyped-def]
    return jsonify({"status": "ok"})
