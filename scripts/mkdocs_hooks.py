"""MkDocs hooks (mkdocs.yml, ``hooks:``): the pages of the manual that are generated from the
code at every build, so they cannot drift from it.

- ``api/openapi.json``: the OpenAPI document, from :func:`linksvc.web.openapi.document`;
- ``api/reference.md``: that document rendered as Markdown (no JavaScript, no CDN);
- ``configuration.md``: its ``<!-- settings -->`` line replaced by the table of every setting,
  from :data:`linksvc.config.SETTINGS`, :data:`~linksvc.config.SECRETS` and
  :data:`~linksvc.config.HELP`, with the defaults and ranges that :func:`linksvc.config.load`
  applies (read from its source) and gunicorn.conf.py's own three.

Nothing is fetched: the build runs offline. ``tests/system/test_docs_site.py`` builds the site and
checks these pages.
"""

from __future__ import annotations

import ast
import inspect
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# MkDocs puts sys.path back after loading a hook, so linksvc is imported now, not at build.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from linksvc import config  # noqa: E402
from linksvc.web import openapi  # noqa: E402

SETTINGS_MARKER = "<!-- settings -->"


# -- the configuration reference --------------------------------------------------------------


def _call_defaults() -> dict[str, tuple[str, str]]:
    """``{NAME: (default, values)}`` for every ``_int``, ``_choice`` and ``_flag`` call in
    ``config.load``, the arguments evaluated as the code evaluates them."""
    tree = ast.parse(inspect.getsource(config.load))
    scope = vars(config)
    found: dict[str, tuple[str, str]] = {}

    def value(node: ast.expr) -> Any:
        return eval(compile(ast.Expression(node), "<config>", "eval"), scope)  # our own source

    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            continue
        kind, args = node.func.id, node.args
        if kind not in ("_int", "_choice", "_flag") or len(args) < 2:
            continue
        if isinstance(args[1], ast.JoinedStr):  # f"LINKSVC_MAX_TTL_{purpose.upper()}"
            names = [f"{config.PREFIX}MAX_TTL_{p.upper()}" for p in config.PURPOSES]
        else:
            names = [value(args[1])]
        for name in names:
            if kind == "_int":
                default, lo, hi = (value(a) for a in args[2:5])
                found[name] = (str(default), f"{lo}–{hi}")
            elif kind == "_choice":
                default, choices = value(args[2]), value(args[3])
                found[name] = (default, ", ".join(f"`{c}`" for c in choices))
            else:
                found[name] = ("0", "`1` or `0`")
    return found


def _gunicorn_defaults() -> dict[str, str]:
    """``_ENV.get("LINKSVC_X", "default")`` in gunicorn.conf.py, where the default is a string."""
    tree = ast.parse((ROOT / "gunicorn.conf.py").read_text())
    found = {}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and len(node.args) == 2
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[1], ast.Constant)
        ):
            found[str(node.args[0].value)] = str(node.args[1].value)
    return found


#: Defaults that are not one value of ``Settings``: said in words.
_DEFAULTS_IN_WORDS = {
    "INSTANCE_PATH": "`./instance`",
    "TRUSTED_HOSTS": "unset",
    "KEY_ENCRYPTION_KEY": "development: `instance/kek.key`",
    "SECRET_KEY": "development: `instance/secret.key`",
    "WORKERS": "2 × cores + 1 (PostgreSQL), cores + 1 (SQLite)",
    "SERVER": "`gunicorn`",
    "TRACEPARENT": "`link`",
}


def _shown(value: Any, instance: str) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "`1`" if value else "`0`"
    if isinstance(value, frozenset):
        value = ",".join(sorted(value))
    text = str(value).replace(instance, "instance")
    return f"`{text}`" if text else "empty"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def config_reference() -> str:
    """The table of every ``LINKSVC_*`` setting, as Markdown."""
    missing = [s for s in config.SETTINGS if s not in config.HELP]
    extra = [s for s in config.HELP if s not in config.SETTINGS]
    if missing or extra:
        raise ValueError(
            f"linksvc.config.HELP must say what each setting of SETTINGS is for: "
            f"add {missing}, remove {extra}"
        )
    calls = _call_defaults()
    gunicorn = _gunicorn_defaults()
    instance = str(Path.cwd().resolve() / "instance")
    loaded = config.load({})
    rows = ["| variable | default | values | meaning |", "|---|---|---|---|"]
    for setting in config.SETTINGS:
        name = config.PREFIX + setting
        values = ""
        if name in calls:
            default, values = calls[name]
            default = f"`{default}`"
        elif setting in _DEFAULTS_IN_WORDS:
            default = _DEFAULTS_IN_WORDS[setting]
        elif name in gunicorn:
            default = f"`{gunicorn[name]}`"
        elif hasattr(loaded, setting.lower()):
            default = _shown(getattr(loaded, setting.lower()), instance)
        else:
            raise ValueError(f"{name}: say its default in _DEFAULTS_IN_WORDS ({__file__})")
        meaning = config.HELP[setting]
        if setting in config.SECRETS:
            meaning += f". Also as `{name}_FILE`, naming a file that holds it"
        rows.append(f"| `{name}` | {_cell(default)} | {_cell(values)} | {_cell(meaning)} |")
    return "\n".join(rows) + "\n"


# -- the API reference ------------------------------------------------------------------------


def openapi_document() -> dict[str, Any]:
    """The document linksvc serves at ``/api/v1/openapi.json``, with every optional
    operation and S3's ``bucket`` (the served one leaves out what a deployment does not
    route or accept)."""
    return openapi.document(set(openapi.OPTIONAL_OPERATIONS), buckets=True)


def _type(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        return f"[{name}](#{name.lower()})"
    if "enum" in schema and len(schema["enum"]) > 12:
        return f"one of {len(schema['enum'])} strings (the list is in the OpenAPI document)"
    if "enum" in schema:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in schema["enum"])
    for key in ("oneOf", "anyOf"):
        if key in schema:
            return " or ".join(_type(s) for s in schema[key])
    kind = schema.get("type", "any")
    kind = " or ".join(kind) if isinstance(kind, list) else kind
    if kind == "array" and "items" in schema:
        kind = f"array of {_type(schema['items'])}"
    if "format" in schema:
        kind += f" ({schema['format']})"
    limits = []
    for key, word in (("minLength", "≥"), ("minimum", "≥"), ("minItems", "≥")):
        if key in schema:
            limits.append(f"{word} {schema[key]}")
    for key, word in (("maxLength", "≤"), ("maximum", "≤"), ("maxItems", "≤")):
        if key in schema:
            limits.append(f"{word} {schema[key]}")
    return kind + (f", {' '.join(limits)}" if limits else "")


def _fields(schema: dict[str, Any], prefix: str = "") -> list[str]:
    rows = []
    required = set(schema.get("required", ()))
    for name, prop in schema.get("properties", {}).items():
        rows.append(
            f"| `{prefix}{name}` | {_type(prop)} | {'yes' if name in required else ''} "
            f"| {_cell(prop.get('description', ''))} |"
        )
        if "properties" in prop:
            rows += _fields(prop, f"{prefix}{name}.")
    return rows


def _table(header: str, rows: list[str]) -> list[str]:
    if not rows:
        return []
    cols = header.count("|") - 1
    return [header, "|" + "---|" * cols, *rows, ""]


def api_reference(doc: dict[str, Any]) -> str:
    """The OpenAPI document as one Markdown page: each operation, then each schema."""
    info = doc["info"]
    out = [
        "# API reference",
        "",
        f"{info['summary']} {info['description']}",
        "",
        "This page is generated at every build from the OpenAPI "
        f"{doc['openapi']} document linksvc serves at `GET /api/v1/openapi.json` "
        "([the same document](openapi.json)); a running linksvc renders it interactively at "
        "`/api/v1/docs`. Problems are `application/problem+json`, every other body "
        "`application/json`. With local storage, a download's `bucket` is refused and left "
        "out of the served document.",
        "",
    ]
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method not in ("get", "put", "post", "delete", "patch"):
                continue
            out += [f"## `{method.upper()} {path}` — {op['summary']} {{#{op['operationId']}}}", ""]
            if op.get("description"):
                out += [op["description"], ""]
            if op.get("security") == []:
                out += ["No API key needed.", ""]
            params = [
                f"| `{p['name']}` | {p['in']} | {'yes' if p.get('required') else ''} "
                f"| {_type(p.get('schema', {}))} | {_cell(p.get('description', ''))} |"
                for p in op.get("parameters", [])
            ]
            out += _table("| parameter | in | required | type | meaning |", params)
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            if body:
                out += [f"Request body: {_type(body['schema'])}.", ""]
                if "example" in body:
                    example = json.dumps(body["example"], indent=2, ensure_ascii=False)
                    out += ["```json", example, "```", ""]
            responses = []
            for status, resp in op.get("responses", {}).items():
                content = resp.get("content", {})
                kind = ", ".join(_type(media["schema"]) for media in content.values())
                responses.append(f"| {status} | {_cell(resp['description'])} | {kind} |")
            out += _table("| status | when | body |", responses)
    out += ["## Schemas", ""]
    for name, schema in doc["components"]["schemas"].items():
        out += [f"### {name} {{#{name.lower()}}}", ""]
        if schema.get("description"):
            out += [_cell(schema["description"]), ""]
        rows = _fields(schema)
        out += _table("| field | type | required | meaning |", rows) or [_type(schema), ""]
    return "\n".join(out) + "\n"


# -- MkDocs events ----------------------------------------------------------------------------


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    doc = openapi_document()
    for uri, content in (
        ("api/openapi.json", json.dumps(doc, indent=2, ensure_ascii=False) + "\n"),
        ("api/reference.md", api_reference(doc)),
    ):
        files.append(File.generated(config, uri, content=content))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if page.file.src_uri == "configuration.md":
        if SETTINGS_MARKER not in markdown:
            raise ValueError(f"configuration.md lost its {SETTINGS_MARKER} line")
        return markdown.replace(SETTINGS_MARKER, config_reference())
    return markdown
