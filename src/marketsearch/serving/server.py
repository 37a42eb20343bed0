"""The model server: a KServe custom predictor for the fused model and the FAISS index.

``marketsearch serve [--model BUNDLE] [--port 8080]`` starts one process that answers

- V1  ``POST /v1/models/marketsearch:predict``  ({"instances": [...]}, see ``contract``)
- V2  ``POST /v2/models/marketsearch/infer``    (the same fields as named tensors)
- health: ``/v2/health/live`` at once, ``/v2/health/ready`` and ``/v2/models/marketsearch/ready``
  with 200 only once the models and the index are loaded and warmed up (503 before);
- the search page at ``/search`` and listing thumbnails at ``/photos/<product_id>.jpg``;
- "more like this" at ``GET /api/similar/<product_id>?k=10&location=Town,+County``.

The HTTP port opens at once and the bundle loads in a background thread, so Kubernetes sees
the pod live but not ready while TensorFlow starts. A bad request is answered 4xx with a
message naming the field (bodies over ``serving.max_request_bytes``: 413); the server never
answers a client's mistake with a 5xx.

Hot swap: ``--model`` may be the symlink deploy swaps (marketsearch.publish). Every
``serving.reload_interval_s`` the server checks where it points; a new bundle is verified,
loaded and warmed in the background while the current one keeps answering, then switched to
in one step; each request answers from the model it started with, thumbnails included. A
bundle that fails verification or warm-up is refused (logged, once) and the current one keeps
serving; readiness stays 200 throughout.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
from functools import partial
from importlib import resources
from pathlib import Path

import numpy as np

from marketsearch.bundle import Bundle
from marketsearch.config import ServingConfig
from marketsearch.serving.contract import RequestError, v2_to_instances

log = logging.getLogger(__name__)


def _import_kserve():
    """kserve parses sys.argv when its model_server module is imported (and argparse accepts
    abbreviations: our --model would become its --model_name), so import it with a bare argv."""
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        import kserve
        from kserve import model_server
    finally:
        sys.argv = argv
    return kserve, model_server


kserve, _model_server = _import_kserve()
from kserve.errors import InvalidInput  # noqa: E402
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse  # noqa: E402


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets 413 before anything parses it
    (by Content-Length when sent, else by counting the streamed chunks)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await self._reject(send, int(length))
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge(seen)
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge as exc:
            await self._reject(send, exc.size)

    async def _reject(self, send, size: int):
        import orjson

        body = orjson.dumps({"error": f"request body: {size:,} bytes is over the limit of "
                                      f"{self.limit:,} bytes (serving.max_request_bytes)"})
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    def __init__(self, size: int):
        self.size = size


class MarketsearchModel(kserve.Model):
    """The fused model + index as a KServe model. ``load`` may run in a background thread."""

    def __init__(self, model_dir: str | Path, cfg: ServingConfig):
        super().__init__(cfg.model_name)
        self.model_dir = Path(model_dir)   # as given: deploy's symlink, which a deploy swaps
        self.cfg = cfg
        self.engine = None
        self.load_error: str | None = None
        self.refused: dict[Path, str] = {}  # bundles a hot swap refused, and why
        self._pool = None

    def _engine_at(self, bundle_dir: Path):
        """A verified, warmed engine for the bundle at ``bundle_dir`` (a resolved directory)."""
        from marketsearch.serving.engine import SearchEngine

        engine = SearchEngine.load(bundle_dir, self.cfg)
        engine.warmup()
        return engine

    def load(self) -> bool:
        from concurrent.futures import ThreadPoolExecutor

        from marketsearch.serving.engine import resolve_bundle_dir

        try:
            engine = self._engine_at(resolve_bundle_dir(self.model_dir))
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("could not load the bundle at %s", self.model_dir)
            raise
        self._pool = ThreadPoolExecutor(self.cfg.inference_threads, thread_name_prefix="infer")
        self.engine = engine
        self.ready = True
        log.info("model %s ready: %d labels, %d listings indexed (%s)", self.name,
                 len(engine.labels), len(engine.index), engine.bundle.root)
        return True

    def reload_if_changed(self) -> str | None:
        """Hot swap: if ``model_dir`` now points at another bundle, load, verify and warm it
        while the current one keeps answering, then switch (one reference assignment: each
        request answers from the engine it started with). A bundle that fails is refused, once,
        and the current one keeps serving. Returns "switched", "refused" or None."""
        from marketsearch.serving.engine import resolve_bundle_dir

        try:
            target = resolve_bundle_dir(self.model_dir)
        except FileNotFoundError as exc:          # mid-swap or removed: keep what we have
            log.warning("hot swap: %s", exc)
            return None
        if self.engine is None or target == self.engine.bundle.root or target in self.refused:
            return None
        log.info("hot swap: %s now points at %s; loading it beside %s", self.model_dir, target,
                 self.engine.bundle.root)
        try:
            engine = self._engine_at(target)
        except Exception as exc:
            self.refused[target] = f"{type(exc).__name__}: {exc}"
            log.error("hot swap: refusing %s (%s); still serving %s", target,
                      self.refused[target], self.engine.bundle.root)
            return "refused"
        self.engine = engine
        log.info("hot swap: now serving %s", target)
        return "switched"

    def watch(self) -> None:
        """Check for a new bundle every ``serving.reload_interval_s`` (a daemon thread)."""
        import time

        while True:
            time.sleep(self.cfg.reload_interval_s)
            try:
                self.reload_if_changed()
            except Exception:  # pragma: no cover - never let the watcher die
                log.exception("hot swap: unexpected error")

    async def _run(self, fn, *args, **kwargs):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, partial(fn, *args, **kwargs))

    async def predict(self, payload, headers: dict | None = None):
        try:
            engine = self.engine                # one model for the whole request
            if isinstance(payload, InferRequest):
                instances = v2_to_instances(payload.inputs)
                answers = await self._run(engine.answer_instances, instances, v2=True)
                return self._v2_response(payload, answers, engine.labels)
            if isinstance(payload, (bytes, str)):  # sent without content-type: application/json
                payload = _parse_json(payload)
            if not isinstance(payload, dict) or "instances" not in payload:
                raise RequestError('body: must be a JSON object {"instances": [...]}')
            extra = sorted(set(payload) - {"instances"})
            if extra:
                raise RequestError(f"body: unknown keys {extra}; only 'instances' is read")
            answers = await self._run(engine.answer_instances, payload["instances"])
            return {"predictions": [a.to_v1() for a in answers]}
        except RequestError as exc:
            raise InvalidInput(str(exc)) from None

    def _v2_response(self, request: InferRequest, answers, labels) -> InferResponse:
        n, k = len(answers), max(len(a.neighbors) for a in answers)
        ids = [[h["product_id"] for h in a.neighbors] + [""] * (k - len(a.neighbors))
               for a in answers]
        scores = [[h["score"] for h in a.neighbors] + [0.0] * (k - len(a.neighbors))
                  for a in answers]
        dist = [[-1.0 if h["distance_km"] is None else h["distance_km"] for h in a.neighbors]
                + [-1.0] * (k - len(a.neighbors)) for a in answers]
        outputs = [
            InferOutput("category", [n], "BYTES", [a.category for a in answers]),
            InferOutput("modality", [n], "BYTES", [a.modality for a in answers]),
            InferOutput("labels", [len(labels)], "BYTES", list(labels)),
            InferOutput("scores", [n, len(labels)], "FP32",
                        np.array([[a.scores[c] for c in labels] for a in answers],
                                 np.float32).reshape(-1).tolist()),
            InferOutput("neighbor_ids", [n, k], "BYTES", [i for row in ids for i in row]),
            InferOutput("neighbor_scores", [n, k], "FP32", [s for row in scores for s in row]),
            InferOutput("neighbor_distance_km", [n, k], "FP32", [d for row in dist for d in row]),
            InferOutput("embedding", [n, len(answers[0].embedding)], "FP32",
                        np.stack([a.embedding for a in answers]).reshape(-1).tolist()),
        ]
        if answers[0].price is not None:     # (estimate, low, high) in GBP per row
            outputs.append(InferOutput("price", [n, 3], "FP32", np.stack(
                [a.price for a in answers]).astype(np.float32).reshape(-1).tolist()))
        return InferResponse(response_id=request.id or "", model_name=self.name,
                             infer_outputs=outputs)


def _parse_json(body: bytes | str):
    import orjson

    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestError(f"body: is not valid JSON ({exc})") from None


# --------------------------------------------------------------------------- the app's extra routes
def add_routes(app, model: MarketsearchModel) -> None:
    """Routes beside KServe's own, registered first so that readiness is ours."""
    from fastapi import Query as Q
    from fastapi.responses import HTMLResponse, JSONResponse, Response

    def not_ready():
        detail = model.load_error or "loading the model and the index"
        return JSONResponse({"ready": False, "error": detail}, status_code=503)

    async def ready():
        return {"ready": True} if model.ready else not_ready()

    async def page():
        html = resources.files("marketsearch.serving").joinpath("page.html").read_text()
        return HTMLResponse(html.replace("{{MODEL_NAME}}", model.name))

    async def photo(product_id: str):
        thumbs = model.engine.bundle.thumbnails if model.ready else {}
        data = thumbs.get(product_id)
        if data is None:
            return JSONResponse({"error": f"product_id: no photo for {product_id!r}"},
                                status_code=404)
        return Response(data, media_type="image/jpeg",
                        headers={"cache-control": "public, max-age=86400"})

    async def similar(product_id: str, k: int = Q(10), location: str | None = Q(None)):
        if not model.ready:
            return not_ready()
        if not 1 <= k <= model.cfg.max_k:
            return JSONResponse({"error": f"k: must be between 1 and {model.cfg.max_k}, got {k}"},
                                status_code=400)
        lat = lon = None
        if location:
            coords = model.engine.geocode(location)
            if coords is None:
                return JSONResponse({"error": f"location: {location!r} is not a UK town or "
                                              "county we know"}, status_code=400)
            lat, lon = coords
        engine = model.engine
        try:
            hits = await model._run(engine.more_like_this, product_id, k, lat, lon)
        except KeyError:
            return JSONResponse({"error": f"product_id: {product_id!r} is not in the index"},
                                status_code=404)
        return {"product_id": product_id, "neighbors": hits}

    app.add_api_route("/v2/health/ready", ready, methods=["GET"])
    app.add_api_route("/search", page, methods=["GET"], response_class=HTMLResponse)
    app.add_api_route("/photos/{product_id}.jpg", photo, methods=["GET"])
    app.add_api_route("/api/similar/{product_id}", similar, methods=["GET"])


def serve(model_dir: str | Path, cfg: ServingConfig, port: int | None = None) -> None:
    """Start the server; blocks until SIGTERM/SIGINT."""
    from marketsearch.serving.engine import resolve_bundle_dir

    Bundle(resolve_bundle_dir(model_dir)).verify()  # fail now if absent or changed since built
    model = MarketsearchModel(model_dir, cfg)
    app = _model_server.app
    add_routes(app, model)
    app.add_middleware(BodyLimit, limit=cfg.max_request_bytes)
    server = kserve.ModelServer(http_port=port or cfg.port, enable_grpc=False, workers=1)
    server.register_model(model)

    def load_in_background():
        try:
            model.load()
        except Exception:
            # Readiness now reports the error; stop so that the orchestrator restarts us.
            os.kill(os.getpid(), signal.SIGTERM)
            return
        if cfg.reload_interval_s > 0:
            threading.Thread(target=model.watch, name="hot-swap", daemon=True).start()

    threading.Thread(target=load_in_background, name="load-bundle", daemon=True).start()
    log.info("serving %s from %s on port %d (search page: /search)", cfg.model_name, model_dir,
             port or cfg.port)
    server.start([])
