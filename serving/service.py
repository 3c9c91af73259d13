"""The prediction service: BentoML HTTP endpoints over the champion models and Feast.

Run it with ``engage serve`` (host and port from ``serving`` in params.yaml, 127.0.0.1 by
default) or ``bentoml serve serving.service:EngageService --host 127.0.0.1 --port N``.
Each worker loads once: params and paths (``$ENGAGE_DATA_DIR``, ``$ENGAGE_MLRUNS_DIR``
honoured), the ``churn`` and ``appetence`` champions from the MLflow registry
(``models:/<name>@champion``, read-only), the Feast registry and online store (read-only;
no ``feast serve``) and the explainers.

Start-up (:mod:`serving.startup`): the stores are checked before any worker starts (in
``engage serve`` and in BentoML's parent process), nothing missing is ever created, and
a worker that still cannot load ends the whole server with exit code 3 and one line
naming the path and the command to run, instead of being restarted forever.

Endpoints (models and examples in ``serving/api_models.py``; OpenAPI page at ``GET /``):

- ``POST /predict`` ``{customer_ids, explain, top_k}``: latest online features of each id
  -> p_purchase, p_churn, stage, engagement score, dial position, segment, CLV, value
  at risk, reasons, model versions, ``features_as_of`` and ``stale``. An unknown id is
  answered (status ``unknown_customer``, Nurture / New, null probabilities), not an error.
- ``POST /predict_features`` ``{rows, explain, top_k}``: the same from feature values
  sent by the caller; every feature is required and checked against its range
  (:func:`features.catalog.value_rules`); a problem is a 400 naming the feature and rule.
- ``POST /at_risk`` ``{limit, segment, min_value_at_risk, win_back}``: the at-risk list of
  the latest batch scoring run (``engage score``): still-reachable customers, or the
  lapsed ones with ``win_back``; cached until a new run appears.
- ``GET /ready``: 200 with the model versions, feature list, limits and registry state
  after a real read of the online store; 503 with the reason otherwise. BentoML's
  ``GET /readyz`` runs the same check; ``/livez`` and ``/healthz`` are liveness only.

Guards (:class:`RequestGuard`, an ASGI middleware in front of every route):

- API key: when the environment variable named by ``serving.api_key_env``
  (``ENGAGE_API_KEY``) is set and not empty, every route except health and the API docs
  needs it, as ``x-api-key: <key>`` or ``Authorization: Bearer <key>`` (401 otherwise),
  compared in constant time.
- Bodies: one Content-Type, JSON only (415), no Content-Encoding (415: gzip is not
  accepted), at most ``serving.max_body_bytes`` (413), received within
  ``serving.body_timeout_s`` (else 400 and the connection is closed: a body shorter
  than its Content-Length is answered at once instead of holding a worker), then
  validated (400 with each field's path; values are never echoed back).
- Connections must finish their request headers within ``serving.header_timeout_s``
  (:mod:`serving.http_limits`; 408 and closed).
- Privacy: request bodies, ids and features are never logged.

The guard also answers the three prediction routes itself once the body is valid: it
calls the same handlers as the ``@bentoml.api`` methods, but skips BentoML's second
parse and validation of the body, its worker-thread hop and its response model
(together more than the prediction of one contact; see BENCHMARKS.md). Requests of up
to :data:`INLINE_MAX_ROWS` contacts run on the event loop; larger ones in a thread.
BentoML still owns the processes, the OpenAPI page, health, metrics and access logs.

Stale features: a prediction is ``stale`` when its ``features_as_of`` is more than
``serving.stale_after_hours`` before the reference time, the server clock. Set
``$ENGAGE_SERVING_NOW`` to an ISO-8601 time (e.g. ``2026-01-02T00:00:00Z``) to fix the
reference time instead: replays of old data, demos on simulated data, tests
(``engage serve --now`` sets it).

BentoML writes its home (``$BENTOML_HOME``, e.g. Prometheus files) under
``<data dir>/bentoml`` unless set (a temporary folder when the data dir does not exist,
so a wrong path is reported rather than created), and telemetry is off.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import math
import os
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

# Telemetry off and nothing under ~: set before BentoML, MLflow or Feast read them.
# One thread per prediction: a request scores a few rows, for which OpenMP (LightGBM) and
# numba (TreeSHAP) thread pools cost more than they save - milliseconds per call on a
# busy machine. Concurrency comes from requests and BentoML workers instead.
for _var, _val in (
    ("MLFLOW_DISABLE_TELEMETRY", "true"),
    ("BENTOML_DO_NOT_TRACK", "true"),
    ("DO_NOT_TRACK", "true"),
    ("FEAST_USAGE", "False"),
    ("OMP_NUM_THREADS", "1"),
    ("NUMBA_NUM_THREADS", "1"),
):
    os.environ.setdefault(_var, _val)

from engage.config import Params, Paths, load_params, resolve_paths  # noqa: E402
from engage.specs import MODEL_NAMES  # noqa: E402
from features.catalog import value_rules  # noqa: E402
from serving.online import NOW_ENV, parse_now  # noqa: E402


@dataclass(frozen=True)
class Settings:
    """What the service reads from params.yaml and the environment, once per process.

    Attributes:
        params: the parsed params.yaml (``$ENGAGE_PARAMS`` / ``$ENGAGE_PROFILE`` honoured).
        paths: resolved locations (``$ENGAGE_DATA_DIR`` / ``$ENGAGE_MLRUNS_DIR`` honoured).
        api_key: the required API key, or None when access is open.
        now: fixed reference time for staleness (``$ENGAGE_SERVING_NOW``), or None for
            the clock.

    """

    params: Params
    paths: Paths
    api_key: str | None
    now: datetime | None

    @property
    def max_ids(self) -> int:
        return self.params.serving.max_ids

    @property
    def max_body_bytes(self) -> int:
        return self.params.serving.max_body_bytes

    @property
    def body_timeout_s(self) -> float:
        return self.params.serving.body_timeout_s

    @property
    def stale_after(self) -> timedelta:
        return timedelta(hours=self.params.serving.stale_after_hours)

    def reference_time(self) -> datetime:
        """The time staleness is measured against."""
        return self.now or datetime.now(UTC)


@functools.cache
def settings() -> Settings:
    """The process's settings (read once; the service and the middleware share them)."""
    params = load_params()
    paths = resolve_paths(params)
    key = os.environ.get(params.serving.api_key_env) or None
    return Settings(params, paths, key, parse_now(os.environ.get(NOW_ENV)))


def _bentoml_home() -> str:
    data_dir = settings().paths.data_dir
    if data_dir.is_dir():
        return str(data_dir / "bentoml")
    # Creating <data dir>/bentoml would create a mistyped data dir: the start-up checks
    # report it instead, and BentoML's few files go to a temporary folder meanwhile.
    return str(os.path.join(tempfile.gettempdir(), "engage-bentoml"))


os.environ.setdefault("BENTOML_HOME", _bentoml_home())

# BentoML's IO models override a pydantic hook that pydantic 2.11+ flags as deprecated:
# a warning in every process at import, about BentoML's code, not this service's.
warnings.filterwarnings(
    "ignore",
    message=r"The `__get_pydantic_core_schema__` method of the `BaseModel` class",
    module=r"_bentoml_sdk\.io_models",
)

import bentoml  # noqa: E402  (after BENTOML_HOME and the telemetry switches)
from fastapi import FastAPI  # noqa: E402
from pydantic import BaseModel, ValidationError  # noqa: E402
from starlette.responses import JSONResponse, Response  # noqa: E402

from serving import http_limits  # noqa: E402
from serving.api_docs import DOCS_HTML, info, request_example  # noqa: E402
from serving.api_models import (  # noqa: E402
    AtRiskRequest,
    AtRiskResponse,
    ErrorDetail,
    ErrorResponse,
    NotReady,
    PredictFeaturesResponse,
    PredictResponse,
    Readiness,
    feature_row_example,
    feature_row_model,
    predict_features_request_model,
    predict_request_model,
)
from serving.online import OnlinePredictor, RequestError, StoreUnavailable  # noqa: E402
from serving.startup import (  # noqa: E402
    EXIT_STARTUP_FAILED,
    StartupError,
    abort_worker,
    arm_arbiter,
    check_stores,
    load_predictor,
    one_line,
)

logger = logging.getLogger("engage.serving")

# BentoML builds uvicorn's configuration itself: the header timeout goes in through
# uvicorn's protocol table, before the worker's uvicorn loads it (see http_limits).
http_limits.install(settings().params.serving.header_timeout_s)

# The request body of /predict_features lists exactly the features, with their ranges.
_RULES = value_rules(settings().params)
_MAX_IDS = settings().params.serving.max_ids
FeatureRow = feature_row_model(_RULES)
PredictFeaturesRequest = predict_features_request_model(
    FeatureRow, feature_row_example(_RULES), _MAX_IDS
)
# The documented limits are the enforced ones (serving.max_ids in the schema too).
_HAZARD = settings().params.hazard
PredictRequest = predict_request_model(_MAX_IDS, _HAZARD.period_days * _HAZARD.h_max_periods)

# Route -> request model: bodies are validated by RequestGuard before anything else.
REQUEST_MODELS: dict[str, type[BaseModel]] = {
    "/predict": PredictRequest,
    "/predict_features": PredictFeaturesRequest,
    "/at_risk": AtRiskRequest,
}
# Open even with an API key: probes and the API documentation (no data behind them).
OPEN_PATHS = frozenset({"/livez", "/healthz", "/readyz", "/ready", "/", "/docs.json"})
OPEN_PREFIXES = ("/static_content/",)
MAX_ERRORS = 5
INLINE_MAX_ROWS = 32  # larger requests are scored in a worker thread, off the event loop
PROBE_EVERY_S = 1.0  # readiness re-reads the stores at most this often per worker


def error_response(
    status: int, message: str, detail: list | None = None, close: bool = False
) -> JSONResponse:
    """The JSON error body every guard and endpoint answers with (:class:`ErrorResponse`).

    Args:
        status: HTTP status.
        message: one line naming the problem.
        detail: per-field problems of a rejected body.
        close: ask the client to close the connection (its request was not read whole).

    """
    body: dict = {"error": message}
    if detail:
        body["detail"] = detail
    response = JSONResponse(body, status_code=status)
    if close:
        response.headers["connection"] = "close"
    return response


def describe_validation(err: ValidationError) -> tuple[str, list[dict]]:
    """A one-line message and a detail list for a pydantic error, without the input.

    The input values are left out on purpose: they are customer data, and they would be
    echoed back (or logged) otherwise. The same problem in several list items is one
    line with the count of items, e.g.
    ``rows.*.purchases_30d: Input should be greater than or equal to 0 (2 item(s): rows.0,
    rows.3)``.
    """
    detail = []
    groups: dict[tuple[str, str], list[str]] = {}
    for e in err.errors(include_url=False, include_context=False, include_input=False):
        loc = ".".join(str(p) for p in e["loc"]) or "body"
        detail.append({"loc": loc, "msg": e["msg"], "type": e["type"]})
        pattern = ".".join("*" if isinstance(p, int) else str(p) for p in e["loc"]) or "body"
        groups.setdefault((pattern, e["msg"]), []).append(loc)
    lines = []
    for (pattern, msg), locs in groups.items():
        if pattern in _LIMITED and msg.startswith("List should have at most"):
            msg += f" ({_LIMITED[pattern]})"
        if "*" in pattern:
            first = ", ".join(".".join(loc.split(".")[:2]) for loc in locs[:3])
            lines.append(f"{pattern}: {msg} ({len(locs)} item(s): {first})")
        else:
            lines.append(f"{pattern}: {msg}")
    shown = "; ".join(lines[:MAX_ERRORS])
    more = f" (and {len(lines) - MAX_ERRORS} more)" if len(lines) > MAX_ERRORS else ""
    return f"invalid request: {shown}{more}", detail


# Fields whose size limit is a parameter: a too-long error names it.
_LIMITED = {"customer_ids": "serving.max_ids", "rows": "serving.max_ids"}


def _json_bytes(doc: dict) -> bytes:
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


def _unexpected(path: str) -> JSONResponse:
    # A bug, not bad input: the traceback goes to the server log (the route only, never
    # the body), the client gets the documented error body.
    logger.exception("unexpected error answering %s", path)
    return error_response(500, "unexpected server error: the server log has the details")


class _Incomplete(Exception):
    """The request body did not arrive whole in time."""


class RequestGuard:
    """ASGI middleware: API key, headers, body size, time and validation; fast answers.

    Everything is rejected here, before BentoML and the models see the request, with a
    JSON :class:`ErrorResponse` naming the problem. Bodies are read at most up to
    ``serving.max_body_bytes`` (+1 byte), whatever Content-Length claims, and within
    ``serving.body_timeout_s``. A valid body of a prediction route is answered here (see
    the module docstring); ``GET /docs.json`` gets the OpenAPI document with the error
    bodies this service really sends.
    """

    def __init__(self, app, config: Settings | None = None) -> None:
        self.app = app
        self.config = config or settings()
        self.key = self.config.api_key.encode() if self.config.api_key else None
        self._docs: bytes | None = None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if self.key is not None and not self._open(path) and not self._authorised(scope):
            response = error_response(
                401,
                "missing or invalid API key: send it as the x-api-key header or "
                "Authorization: Bearer <key>",
            )
            response.headers["WWW-Authenticate"] = "Bearer"
            await response(scope, receive, send)
            return
        if path == "/" and scope["method"] in ("GET", "HEAD"):
            # The product's page, every asset local (BentoML's loads a tag manager).
            response = Response(DOCS_HTML, media_type="text/html")
            await response(scope, receive, send)
            return
        if path == "/docs.json" and scope["method"] == "GET":
            try:
                response = Response(self._openapi(), media_type="application/json")
            except Exception:
                response = _unexpected(path)
            await response(scope, receive, send)
            return
        model = REQUEST_MODELS.get(path)
        if model is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        problem = self._check_headers(scope)
        body = b""
        if problem is None:
            try:
                body, problem = await self._read_body(scope, receive)
            except _Incomplete as err:
                problem = error_response(400, str(err), close=True)
        request = None
        if problem is None:
            try:
                request = model.model_validate_json(body or b"{}")
            except ValidationError as err:
                problem = error_response(400, *describe_validation(err))
        if problem is not None:
            await problem(scope, receive, send)
            return
        await self._answer(path, request, scope, receive, send)

    @staticmethod
    def _open(path: str) -> bool:
        return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)

    def _authorised(self, scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"x-api-key":
                given = value.strip()
            elif name == b"authorization" and value[:7].lower() == b"bearer ":
                given = value[7:].strip()
            else:
                continue
            # Constant time: the comparison takes as long whatever prefix matches.
            if hmac.compare_digest(given, self.key):
                return True
        return False

    @staticmethod
    def _check_headers(scope) -> JSONResponse | None:
        types = [v for k, v in scope["headers"] if k == b"content-type"]
        if len(types) > 1:
            return error_response(
                400, f"{len(types)} Content-Type headers: send exactly one, application/json"
            )
        media = (types[0] if types else b"application/json").split(b";")[0].strip()
        if media.lower() != b"application/json":
            name = media.decode("latin-1")
            return error_response(415, f"Content-Type must be application/json, got {name!r}")
        encodings = [
            v.decode("latin-1").strip().lower()
            for k, v in scope["headers"]
            if k == b"content-encoding"
        ]
        encodings = [e for e in encodings if e not in ("", "identity")]
        if encodings:
            return error_response(
                415,
                f"Content-Encoding {', '.join(encodings)} is not accepted: send the JSON "
                "body uncompressed",
            )
        if sum(1 for k, _ in scope["headers"] if k == b"content-length") > 1:
            return error_response(400, "more than one Content-Length header")
        return None

    async def _read_body(self, scope, receive) -> tuple[bytes, JSONResponse | None]:
        limit = self.config.max_body_bytes
        too_big = error_response(
            413, f"request body over {limit:,} bytes (serving.max_body_bytes)", close=True
        )
        length = dict(scope["headers"]).get(b"content-length")
        expected = None
        if length is not None:
            try:
                expected = int(length)
            except ValueError:
                return b"", error_response(400, "invalid Content-Length header", close=True)
            if expected < 0:
                return b"", error_response(400, "invalid Content-Length header", close=True)
            if expected > limit:
                return b"", too_big
        timeout = self.config.body_timeout_s
        chunks, size = [], 0
        try:
            # One deadline for the whole body (asyncio.timeout: no task per receive).
            async with asyncio.timeout(timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        break
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:  # a chunked body without Content-Length
                        return b"", too_big
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            got = f"{size:,} of {expected:,}" if expected is not None else f"{size:,}"
            raise _Incomplete(
                f"request body incomplete: {got} bytes received in {timeout:g} s "
                "(serving.body_timeout_s); send the whole body at once, with a "
                "Content-Length that matches it"
            ) from None
        return b"".join(chunks), None

    async def _answer(self, path: str, request: BaseModel, scope, receive, send) -> None:
        try:
            service = bentoml.get_current_service()
        except bentoml.exceptions.BentoMLException:
            await error_response(503, "service is loading")(scope, receive, send)
            return
        handler = {
            "/predict": service.answer_predict,
            "/predict_features": service.answer_predict_features,
            "/at_risk": service.answer_at_risk,
        }[path]
        size = len(getattr(request, "customer_ids", None) or getattr(request, "rows", ()) or ())
        try:
            if size <= INLINE_MAX_ROWS and path != "/at_risk":
                status, doc = handler(request)
            else:
                status, doc = await asyncio.to_thread(handler, request)
            response = Response(_json_bytes(doc), status_code=status, media_type="application/json")
        except Exception:
            response = _unexpected(path)
        await response(scope, receive, send)

    def _openapi(self) -> bytes:
        if self._docs is None:
            self._docs = _json_bytes(openapi_document())
        return self._docs


# ------------------------------------------------------------------------- OpenAPI

_ERRORS = {
    400: "Invalid body, header or feature value (the message names the field and rule)",
    401: "Missing or invalid API key (only when one is configured)",
    404: "Not found",
    408: "Request headers not received within serving.header_timeout_s",
    413: "Body over serving.max_body_bytes",
    415: "Content-Type other than application/json, or a Content-Encoding",
    500: "Unexpected server error (the server log has the details)",
    503: "A store the answer needs cannot be read (the message names it)",
}
_ROUTE_ERRORS = {
    "/predict": (400, 401, 408, 413, 415, 500, 503),
    "/predict_features": (400, 401, 408, 413, 415, 500),
    "/at_risk": (400, 401, 404, 408, 413, 415, 500, 503),
}


def openapi_document() -> dict:
    """BentoML's OpenAPI document with this service's real error bodies and statuses.

    BentoML documents every error as ``{error: string, detail: string}`` with 400, 404
    and 500; this service sends :class:`ErrorResponse` (``detail`` is a list) and also
    401, 408, 413, 415 and 503, and ``GET /ready`` answers 503 with :class:`NotReady`.
    A request body is required where the model has a required field (``/at_risk``'s
    empty body means its defaults), and the document is labelled OpenAPI 3.1, the
    dialect of its pydantic schemas.
    """
    doc = EngageService.openapi_spec.asdict()
    # The product's title, version and text (BentoML's reads "engage:dev", version
    # "None", its own badges and help links).
    doc["info"] = info()
    # The schemas are pydantic's JSON Schema 2020-12 (`type: null`, numeric exclusive
    # bounds): OpenAPI 3.1's dialect, though BentoML labels the document 3.0.2 (in which
    # `segment: null` would read as invalid). Its Swagger UI (5.x) renders 3.1.
    doc["openapi"] = "3.1.0"
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for stale in ("InvalidArgument", "NotFound", "InternalServerError"):
        schemas.pop(stale, None)
    ref = "#/components/schemas/{model}"
    for model in (ErrorResponse, NotReady):
        schema = model.model_json_schema(ref_template=ref)
        for name, sub in schema.pop("$defs", {}).items():
            schemas[name] = sub
        schemas[model.__name__] = schema
    schemas.setdefault("ErrorDetail", ErrorDetail.model_json_schema(ref_template=ref))
    error = {"application/json": {"schema": {"$ref": ref.format(model="ErrorResponse")}}}
    for route, statuses in _ROUTE_ERRORS.items():
        operation = doc["paths"].get(route, {}).get("post")
        if operation is None:
            continue
        model = REQUEST_MODELS[route]
        if "requestBody" in operation:
            # An empty body is {}: a 400 when a field is required, the defaults otherwise.
            required = any(f.is_required() for f in model.model_fields.values())
            operation["requestBody"]["required"] = required
            media = operation["requestBody"].setdefault("content", {})
            media.setdefault("application/json", {})["examples"] = {
                "example": {
                    "summary": "a valid request (the fields' examples)",
                    "value": request_example(model),
                }
            }
        responses = {k: v for k, v in operation["responses"].items() if str(k) == "200"}
        for status in statuses:
            responses[str(status)] = {"description": _ERRORS[status], "content": error}
        operation["responses"] = responses
    ready = doc["paths"].get("/ready", {}).get("get")
    if ready is not None:
        ready["responses"]["503"] = {
            "description": "Not ready: a store cannot be read (the error says which)",
            "content": {"application/json": {"schema": {"$ref": ref.format(model="NotReady")}}},
        }
    return doc


# ----------------------------------------------------------------------- readiness


def readiness_app() -> FastAPI:
    """``GET /ready``: a FastAPI app mounted on the service, so it shows in the OpenAPI."""
    app = FastAPI(title="engage readiness", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get(
        "/ready",
        response_model=Readiness,
        tags=["Infrastructure"],
        summary="Loaded models, feature list, limits and registry state (503 if unready)",
        responses={503: {"model": NotReady, "description": "Not ready"}},
    )
    def ready():
        try:
            service = bentoml.get_current_service()
        except bentoml.exceptions.BentoMLException:
            return JSONResponse({"status": "unavailable", "error": "loading"}, status_code=503)
        problem = service.probe()
        if problem is not None:
            return JSONResponse({"status": "unavailable", "error": problem}, status_code=503)
        return service.readiness()

    return app


def _bind() -> dict:
    # BentoML listens on 0.0.0.0:3000 unless told: default to params.yaml's serving host
    # and port (127.0.0.1), so a bare `bentoml serve` stays on loopback too.
    host = settings().params.serving.host
    return {
        "host": "127.0.0.1" if host == "localhost" else host,
        "port": settings().params.serving.port,
    }


@functools.lru_cache(maxsize=64)
def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


@bentoml.asgi_app(readiness_app(), path="/")
@bentoml.service(
    name="engage",
    # One process per core: each request runs single-threaded (see the thread settings
    # above), so processes, not threads, use the cores. Override with
    # BENTOML_CONFIG_OVERRIDES='{"services": {"engage": {"workers": N}}}' (what
    # `engage serve --workers N` sets).
    workers="cpu_count",
    traffic={"timeout": 60},
    http=_bind(),
)
class EngageService:
    """Churn and appetence predictions on the engagement index.

    Each contact gets its purchase readiness (p_purchase) and churn risk (p_churn) from
    the champion models, its stage on the dial (Nurture, Purchase, Retention, Exit), its
    lifecycle segment, its value at risk and, on request, the reasons behind its stage.
    """

    @bentoml.on_deployment
    def check_stores_before_workers() -> None:
        """In BentoML's parent process, before any worker: the cheap store checks.

        A problem ends ``bentoml serve`` at once with one line and exit code 3; with
        every store in place, the parent is armed to exit 3 if a worker fails later.
        """
        config = settings()
        problems = check_stores(config.paths, config.params)
        if problems:
            sys.stderr.write(f"error: the service cannot start: {'; '.join(problems)}\n")
            sys.stderr.flush()
            raise SystemExit(EXIT_STARTUP_FAILED)
        arm_arbiter()
        # circus (BentoML's process manager) calls a deprecated tornado API on SIGTERM:
        # one warning per stop, about its code.
        warnings.filterwarnings(
            "ignore",
            message="add_callback_from_signal is deprecated",
            module=r"tornado\.platform\.asyncio",
        )

    def __init__(self) -> None:
        config = settings()
        self.config = config
        try:
            self.predictor: OnlinePredictor = load_predictor(config.paths, config.params)
        except StartupError as err:
            abort_worker(str(err))
        self.versions = dict(self.predictor.versions)
        missing = sorted(set(FeatureRow.model_fields) ^ set(self.predictor.inputs))
        if missing:
            abort_worker(
                f"the champions' inputs differ from the feature catalog of the parameters "
                f"({missing[:10]}): serve with the parameters they were trained with, or "
                "retrain (`engage train`)"
            )
        from serving.at_risk import AtRiskCache

        self.at_risk_cache = AtRiskCache(config.paths)
        try:
            self.predictor.warm_up()
            self.at_risk_cache.get(1)
        except StoreUnavailable as err:
            abort_worker(str(err))
        except LookupError:
            pass  # no scoring run yet: /at_risk answers 404 until `engage score`
        self._probe_lock = threading.Lock()
        self._probed: tuple[float, str | None] = (-math.inf, None)
        self._registry: tuple[dict[str, str | None], str | None] = ({}, None)
        logger.setLevel(logging.INFO)  # BentoML's root level is WARNING
        logger.info(
            "loaded churn v%s and appetence v%s; features as of %s; API key %s",
            self.versions.get("churn"),
            self.versions.get("appetence"),
            self.predictor.snapshot_as_of,
            "required" if config.api_key else "not required",
        )

    # ------------------------------------------------------------------- readiness

    def probe(self) -> str | None:
        """Why the service cannot answer now (None: it can); re-checked at most 1/s.

        A real read of the online store (what every /predict needs) and a read-only
        look at the registry (reported by /ready, not a reason to be unready: the loaded
        models keep answering).
        """
        with self._probe_lock:
            at, problem = self._probed
            if time.monotonic() - at < PROBE_EVERY_S:
                return problem
            try:
                self.predictor.probe()
                problem = None
            except StoreUnavailable as err:
                problem = str(err)
            self._registry = self._registry_state()
            self._probed = (time.monotonic(), problem)
            return problem

    def _registry_state(self) -> tuple[dict[str, str | None], str | None]:
        from training.registry import champion_version

        versions: dict[str, str | None] = {}
        for name in MODEL_NAMES:
            try:
                versions[name] = champion_version(self.config.paths, name)
            except LookupError as err:
                return dict.fromkeys(MODEL_NAMES), one_line(err)
        return versions, None

    def __is_ready__(self) -> bool:
        return self.probe() is None

    def readiness(self) -> Readiness:
        """What GET /ready answers when ready."""
        from training.registry import model_uri

        current, registry_problem = self._registry
        models = {
            m: {
                "version": self.versions[m],
                "uri": model_uri(m),
                "features": len(self.predictor.champions[m].features),
                "registry_version": current.get(m),
            }
            for m in MODEL_NAMES
        }
        return Readiness(
            status="ready",
            models=models,
            features_as_of=self.predictor.snapshot_as_of.to_pydatetime(),
            feature_names=self.predictor.inputs,
            api_key_required=self.config.api_key is not None,
            max_ids=self.config.max_ids,
            restart_needed=any(current.get(m) not in (None, self.versions[m]) for m in MODEL_NAMES),
            registry_problem=registry_problem,
            timing_models=self.predictor.timing.identity,
            horizons_days=list(self.predictor.timing.horizons_days),
            h_max_days=self.predictor.timing.h_max_days,
        )

    # -------------------------------------------------------------------- handlers

    def _check_count(self, n: int, field: str) -> None:
        if n > self.config.max_ids:
            raise RequestError(
                f"{field}: {n} given, at most {self.config.max_ids} per request (serving.max_ids)"
            )

    def answer_predict(self, request: PredictRequest) -> tuple[int, dict]:
        """``POST /predict``: (HTTP status, JSON document) for a validated request."""
        ids = request.customer_ids
        try:
            self._check_count(len(ids), "customer_ids")
            scored = self.predictor.predict_ids(
                ids, request.explain, request.top_k, request.horizons_days
            )
        except RequestError as err:
            return err.status, {"error": str(err)}
        now = self.config.reference_time()
        stale_before = (now - self.config.stale_after).timestamp()
        versions = self.versions
        predictions = []
        for i, (cid, record) in enumerate(zip(ids, scored.records(), strict=True)):
            known, as_of = bool(scored.known[i]), float(scored.as_of_s[i])
            record["customer_id"] = cid
            record["status"] = "ok" if known else "unknown_customer"
            record["model_versions"] = versions
            record["decision_horizon_days"] = self.predictor.decision_horizon_days
            record["features_as_of"] = _iso(as_of) if known else None
            record["stale"] = bool(known and as_of < stale_before)
            predictions.append(record)
        return 200, {
            "predictions": predictions,
            "model_versions": versions,
            **self._timing_doc(scored.horizons),
            "reference_time": now.isoformat().replace("+00:00", "Z"),
        }

    def _timing_doc(self, horizons: tuple[int, ...]) -> dict:
        timing = self.predictor.timing
        return {
            "horizons_days": list(horizons),
            "timing_versions": dict(timing.versions),
            "timing_missing": list(timing.missing),
        }

    def answer_predict_features(self, request: BaseModel) -> tuple[int, dict]:
        """``POST /predict_features``: (HTTP status, JSON document) for a valid request."""
        try:
            self._check_count(len(request.rows), "rows")
            rows = [row.__dict__ for row in request.rows]
            X = self.predictor.rows_matrix(rows)
            scored = self.predictor.score_matrix(X, request.explain, request.top_k)
        except RequestError as err:
            return err.status, {"error": str(err)}
        predictions = []
        for i, record in enumerate(scored.records()):
            record["row"] = i
            record["model_versions"] = self.versions
            record["decision_horizon_days"] = self.predictor.decision_horizon_days
            predictions.append(record)
        return 200, {
            "predictions": predictions,
            "model_versions": self.versions,
            **self._timing_doc(scored.horizons),
        }

    def answer_at_risk(self, request: AtRiskRequest) -> tuple[int, dict]:
        """``POST /at_risk``: (HTTP status, JSON document) from the cached latest run."""
        try:
            info, contacts = self.at_risk_cache.get(
                request.limit, request.segment, request.min_value_at_risk, request.win_back
            )
        except ValueError as err:
            return 400, {"error": str(err)}
        except LookupError as err:
            return 404, {"error": str(err)}
        return 200, {
            "run_id": info.run_id,
            "as_of": info.as_of.isoformat().replace("+00:00", "Z"),
            "scored_at": info.scored_at.isoformat().replace("+00:00", "Z"),
            "model_versions": info.versions,
            "contacts": contacts,
        }

    # ----------------------------------------------------------- BentoML endpoints
    # RequestGuard answers these routes with the same handlers; the methods define the
    # OpenAPI operations and serve callers that reach the service without the guard.

    @bentoml.api(route="/predict", input_spec=PredictRequest)
    def predict(
        self,
        customer_ids: list[str],
        explain: bool = False,
        top_k: int = 3,
        horizons_days: list[int] | None = None,
    ) -> PredictResponse:
        """Score contacts by id with their latest online features (Feast).

        Unknown ids are answered with status `unknown_customer` (Nurture / New, null
        probabilities) instead of failing the request. Each prediction also answers
        *when*: per asked horizon (`horizons_days`) the hazard models' probabilities, and
        the expected days to the next purchase, the next activity and churn.
        """
        request = PredictRequest(
            customer_ids=customer_ids, explain=explain, top_k=top_k, horizons_days=horizons_days
        )
        return JSONResponse(*reversed(self.answer_predict(request)))

    @bentoml.api(route="/predict_features", input_spec=PredictFeaturesRequest)
    def predict_features(
        self, rows: list[dict[str, float | None]], explain: bool = False, top_k: int = 3
    ) -> PredictFeaturesResponse:
        """Score contacts from feature values sent by the caller (no Feast lookup).

        Every row needs exactly the features listed by GET /ready (`feature_names`),
        each within its range (see the schema of a row).
        """
        request = PredictFeaturesRequest(rows=rows, explain=explain, top_k=top_k)
        return JSONResponse(*reversed(self.answer_predict_features(request)))

    @bentoml.api(route="/at_risk", input_spec=AtRiskRequest)
    def at_risk(
        self,
        limit: int = 20,
        segment: str | None = None,
        min_value_at_risk: float = 0.0,
        win_back: bool = False,
    ) -> AtRiskResponse:
        """Reachable customers of the latest batch run by value at risk (or the lapsed ones)."""
        request = AtRiskRequest(
            limit=limit, segment=segment, min_value_at_risk=min_value_at_risk, win_back=win_back
        )
        return JSONResponse(*reversed(self.answer_at_risk(request)))


EngageService.add_asgi_middleware(RequestGuard)

__all__ = [
    "EngageService",
    "NOW_ENV",
    "PredictFeaturesRequest",
    "RequestGuard",
    "Settings",
    "openapi_document",
    "parse_now",
    "settings",
]
