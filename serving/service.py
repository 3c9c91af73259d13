"""The prediction service: BentoML HTTP endpoints over the champion models and Feast.

Run it with ``engage serve`` (host and port from ``serving`` in params.yaml, 127.0.0.1 by
default) or ``bentoml serve serving.service:EngageService --host 127.0.0.1 --port N``.
The service loads once per worker: params and paths (``$ENGAGE_DATA_DIR`` honoured), the
``churn`` and ``appetence`` champions from the MLflow registry
(``models:/<name>@champion``; their versions are reported), the Feast store (online
reads in-process through the Feast SDK; no ``feast serve``) and the explainers.

Endpoints (models and examples in ``serving/api_models.py``; OpenAPI page at ``GET /``):

- ``POST /predict`` ``{customer_ids, explain, top_k}``: latest online features of each id
  -> p_purchase, p_churn, stage, engagement score, dial position, segment, CLV, value
  at risk, reasons, model versions, ``features_as_of`` and ``stale``. An unknown id is
  answered (status ``unknown_customer``, Nurture / New, null probabilities), not an error.
- ``POST /predict_features`` ``{rows, explain, top_k}``: the same from feature values
  sent by the caller; a missing, unknown or ill-typed feature is a 400 naming it.
- ``POST /at_risk`` ``{limit, segment, min_value_at_risk, win_back}``: the at-risk list of the
  latest batch scoring run (``engage score``).
- ``GET /ready``: model versions, feature list and limits once loaded (503 before);
  BentoML's ``GET /livez`` / ``/healthz`` (liveness) and ``/readyz`` (readiness) too.

Guards (:class:`RequestGuard`, an ASGI middleware in front of every route):

- bodies over ``serving.max_body_bytes`` get 413, a Content-Type other than JSON 415,
  malformed JSON, wrong types, unknown keys, NaN / Infinity and empty id lists 400 with
  the field's path; more ids than ``serving.max_ids`` 400. The body is validated before
  BentoML sees it, so a bad request never reaches the models and is never logged with
  its content; BentoML still answers an unexpected failure with a 500 and keeps serving.
- API key: when the environment variable named by ``serving.api_key_env``
  (``ENGAGE_API_KEY``) is set and not empty, every route except health and the API docs
  needs it, as ``x-api-key: <key>`` or ``Authorization: Bearer <key>`` (401 otherwise).
- Privacy: request bodies, ids and features are never logged (access log lines hold the
  path, status and latency only).

Stale features: a prediction is ``stale`` when its ``features_as_of`` is more than
``serving.stale_after_hours`` before the reference time, the server clock. Set
``$ENGAGE_SERVING_NOW`` to an ISO-8601 time (e.g. ``2026-01-02T00:00:00Z``) to fix the
reference time instead: replays of old data, demos on simulated data, tests
(``engage serve --now`` sets it).

BentoML writes its home (``$BENTOML_HOME``, e.g. Prometheus files) under
``<data dir>/bentoml`` unless set, and telemetry is off (``BENTOML_DO_NOT_TRACK``,
``MLFLOW_DISABLE_TELEMETRY``). ``bentoml serve`` reads ``BENTOML_HOME`` before importing
this module, so set it in its environment (``engage serve`` does).
"""

from __future__ import annotations

import functools
import hmac
import logging
import os
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
from serving.online import NOW_ENV, parse_now  # noqa: E402


@dataclass(frozen=True)
class Settings:
    """What the service reads from params.yaml and the environment, once per process.

    Attributes:
        params: the parsed params.yaml (``$ENGAGE_PARAMS`` / ``$ENGAGE_PROFILE`` honoured).
        paths: resolved locations (``$ENGAGE_DATA_DIR`` honoured).
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


os.environ.setdefault("BENTOML_HOME", str(settings().paths.data_dir / "bentoml"))

import bentoml  # noqa: E402  (after BENTOML_HOME and the telemetry switches)
from fastapi import FastAPI  # noqa: E402
from pydantic import BaseModel, ValidationError  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402

from serving.api_models import (  # noqa: E402
    AtRiskRequest,
    AtRiskResponse,
    FeaturePrediction,
    PredictFeaturesRequest,
    PredictFeaturesResponse,
    PredictRequest,
    PredictResponse,
    Readiness,
)
from serving.online import OnlinePredictor, RequestError  # noqa: E402

logger = logging.getLogger("engage.serving")
# BentoML 1.4 reads `model_fields` on the request instance, which pydantic 2.11+ flags on
# every request: a line of stderr per call, not a problem of this service.
warnings.filterwarnings(
    "ignore",
    message="Accessing the 'model_fields' attribute on the instance",
    category=DeprecationWarning,
)

# Route -> request model: bodies are validated by RequestGuard before BentoML parses them.
REQUEST_MODELS: dict[str, type[BaseModel]] = {
    "/predict": PredictRequest,
    "/predict_features": PredictFeaturesRequest,
    "/at_risk": AtRiskRequest,
}
# Open even with an API key: probes and the API documentation (no data behind them).
OPEN_PATHS = frozenset({"/livez", "/healthz", "/readyz", "/ready", "/", "/docs.json"})
OPEN_PREFIXES = ("/static_content/",)
MAX_ERRORS = 5


def error_response(status: int, message: str, detail: list | None = None) -> JSONResponse:
    """The JSON error body every guard and endpoint answers with."""
    body: dict = {"error": message}
    if detail:
        body["detail"] = detail
    return JSONResponse(body, status_code=status)


def describe_validation(err: ValidationError) -> tuple[str, list[dict]]:
    """A one-line message and a detail list for a pydantic error, without the input.

    The input values are left out on purpose: they are customer data, and they would be
    echoed back (or logged) otherwise.
    """
    detail = []
    for e in err.errors(include_url=False, include_context=False, include_input=False):
        loc = ".".join(str(p) for p in e["loc"]) or "body"
        detail.append({"loc": loc, "msg": e["msg"], "type": e["type"]})
    shown = "; ".join(f"{d['loc']}: {d['msg']}" for d in detail[:MAX_ERRORS])
    more = f" (and {len(detail) - MAX_ERRORS} more)" if len(detail) > MAX_ERRORS else ""
    return f"invalid request: {shown}{more}", detail


class RequestGuard:
    """ASGI middleware: API key, body size, content type and body validation.

    Everything is rejected here, before BentoML and the models see the request, with a
    JSON ``{"error": ...}`` naming the problem. Bodies are read at most up to
    ``serving.max_body_bytes`` (+1 byte), whatever Content-Length claims.
    """

    def __init__(self, app, config: Settings | None = None) -> None:
        self.app = app
        self.config = config or settings()
        self.key = self.config.api_key.encode() if self.config.api_key else None

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
        model = REQUEST_MODELS.get(path)
        if model is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body, problem = await self._read_body(scope, receive)
        if problem is None:
            try:
                model.model_validate_json(body or b"{}")
            except ValidationError as err:
                problem = error_response(400, *describe_validation(err))
        if problem is not None:
            await problem(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

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
            if hmac.compare_digest(given, self.key):
                return True
        return False

    async def _read_body(self, scope, receive) -> tuple[bytes, JSONResponse | None]:
        limit = self.config.max_body_bytes
        too_big = error_response(413, f"request body over {limit:,} bytes (serving.max_body_bytes)")
        headers = dict(scope["headers"])
        media = headers.get(b"content-type", b"application/json").split(b";")[0].strip()
        if media.lower() != b"application/json":
            message = f"Content-Type must be application/json, got {media.decode('latin-1')!r}"
            return b"", error_response(415, message)
        length = headers.get(b"content-length")
        if length is not None:
            try:
                if int(length) > limit:
                    return b"", too_big
            except ValueError:
                return b"", error_response(400, "invalid Content-Length header")
        chunks, size = [], 0
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
        return b"".join(chunks), None


def _replay(body: bytes, receive):
    # The body was consumed for validation: hand it to BentoML again, then pass through
    # (a later receive() waits for the client to disconnect).
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def readiness_app() -> FastAPI:
    """``GET /ready``: a FastAPI app mounted on the service, so it shows in the OpenAPI."""
    app = FastAPI(title="engage readiness", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get(
        "/ready",
        response_model=Readiness,
        tags=["Infrastructure"],
        summary="Loaded model versions, feature list and limits (503 until loaded)",
        responses={503: {"description": "Still loading"}},
    )
    async def ready():
        try:
            service = bentoml.get_current_service()
        except bentoml.exceptions.BentoMLException:
            return error_response(503, "service is loading")
        return service.readiness()

    return app


def _as_of(seconds: float) -> datetime | None:
    return None if seconds != seconds else datetime.fromtimestamp(seconds, UTC)


def _bind() -> dict:
    # BentoML listens on 0.0.0.0:3000 unless told: default to params.yaml's serving host
    # and port (127.0.0.1), so a bare `bentoml serve` stays on loopback too.
    host = settings().params.serving.host
    return {
        "host": "127.0.0.1" if host == "localhost" else host,
        "port": settings().params.serving.port,
    }


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

    def __init__(self) -> None:
        config = settings()
        self.config = config
        self.predictor = OnlinePredictor(config.paths, config.params)
        self.versions = self.predictor.versions
        logger.info(
            "loaded churn v%s and appetence v%s; features as of %s; API key %s",
            self.versions.get("churn"),
            self.versions.get("appetence"),
            self.predictor.snapshot_as_of,
            "required" if config.api_key else "not required",
        )

    def __is_ready__(self) -> bool:
        return self.predictor is not None

    def readiness(self) -> Readiness:
        """What GET /ready answers."""
        from training.registry import model_uri

        models = {
            m: {
                "version": self.versions[m],
                "uri": model_uri(m),
                "features": len(self.predictor.champions[m].features),
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
        )

    def _check_count(self, n: int, field: str) -> None:
        if n > self.config.max_ids:
            raise RequestError(
                f"{field}: {n} given, at most {self.config.max_ids} per request (serving.max_ids)"
            )

    @bentoml.api(route="/predict", input_spec=PredictRequest)
    def predict(
        self, customer_ids: list[str], explain: bool = False, top_k: int = 3
    ) -> PredictResponse:
        """Score contacts by id with their latest online features (Feast).

        Unknown ids are answered with status `unknown_customer` (Nurture / New, null
        probabilities) instead of failing the request.
        """
        try:
            self._check_count(len(customer_ids), "customer_ids")
            scored = self.predictor.predict_ids(customer_ids, explain, top_k)
        except RequestError as err:
            return error_response(err.status, str(err))
        now = self.config.reference_time()
        stale_before = (now - self.config.stale_after).timestamp()
        predictions = []
        for cid, record, known, as_of in zip(
            customer_ids, scored.records(), scored.known, scored.as_of_s, strict=True
        ):
            record.update(
                customer_id=cid,
                status="ok" if known else "unknown_customer",
                model_versions=self.versions,
                features_as_of=_as_of(as_of),
                stale=bool(known and as_of < stale_before),
            )
            predictions.append(record)
        return PredictResponse.model_validate(
            {"predictions": predictions, "model_versions": self.versions, "reference_time": now}
        )

    @bentoml.api(route="/predict_features", input_spec=PredictFeaturesRequest)
    def predict_features(
        self, rows: list[dict[str, float | None]], explain: bool = False, top_k: int = 3
    ) -> PredictFeaturesResponse:
        """Score contacts from feature values sent by the caller (no Feast lookup).

        Every row needs exactly the features listed by GET /ready (`feature_names`).
        """
        try:
            self._check_count(len(rows), "rows")
            scored = self.predictor.score_matrix(self.predictor.rows_matrix(rows), explain, top_k)
        except RequestError as err:
            return error_response(err.status, str(err))
        predictions = [
            FeaturePrediction.model_validate({**rec, "row": i, "model_versions": self.versions})
            for i, rec in enumerate(scored.records())
        ]
        return PredictFeaturesResponse(predictions=predictions, model_versions=self.versions)

    @bentoml.api(route="/at_risk", input_spec=AtRiskRequest)
    def at_risk(
        self,
        limit: int = 20,
        segment: str | None = None,
        min_value_at_risk: float = 0.0,
        win_back: bool = False,
    ) -> AtRiskResponse:
        """Reachable customers of the latest batch run by value at risk (or the lapsed ones)."""
        from serving.at_risk import at_risk_list

        try:
            info, frame = at_risk_list(
                self.config.paths, top=limit, segment=segment, win_back=win_back
            )
        except ValueError as err:
            return error_response(400, str(err))
        except LookupError as err:
            return error_response(404, str(err))
        # The list is sorted by value at risk, so the kept rows are the top of the rest.
        frame = frame[frame["value_at_risk"] >= min_value_at_risk]
        # Exact floats: pandas' JSON writer keeps at most 15 significant digits, and a
        # client filtering on a value it was sent would miss it by the rounding.
        contacts = [
            {k: v.item() if hasattr(v, "item") else v for k, v in rec.items()}
            for rec in frame.to_dict(orient="records")
        ]
        return AtRiskResponse.model_validate(
            {
                "run_id": info.run_id,
                "as_of": info.as_of.to_pydatetime(),
                "scored_at": info.scored_at.to_pydatetime(),
                "model_versions": info.versions,
                "contacts": contacts,
            }
        )


EngageService.add_asgi_middleware(RequestGuard)

__all__ = ["EngageService", "NOW_ENV", "RequestGuard", "Settings", "parse_now", "settings"]
