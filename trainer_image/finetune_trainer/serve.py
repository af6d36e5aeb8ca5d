"""The built-in inference server: ``python -m finetune_trainer serve --model <run URI>``.

Why it exists: a FineTuneJob with ``serving.engine: builtin`` (and ``finetune run --serve``) needs
an HTTP endpoint for the model it produced, in the trainer image, without another stack. It loads
a published run (``finetune.json``: base + PEFT adapter, or the merged model; s3:// or local) in
the background and serves:

  POST /v1/completions, /v1/chat/completions   OpenAI-compatible, ``stream: true`` as SSE
                                               (``data: {...}`` chunks, then ``data: [DONE]``)
  POST /v1/classify    {"input": [text, ...]} → labels and scores (sequence-classification),
                       words and entities (token-classification)
  GET  /v1/models, /healthz (always 200 while the process runs), /readyz (503 until loaded),
       /metrics (Prometheus: finetune_inference_*)

Errors use the OpenAI shape ``{"error": {"message", "type", "param", "code"}}``: 400 malformed,
404/405 unknown route/method, 411 no Content-Length, 413 body over --max-body-bytes, 429 more than
--max-concurrency requests at once, 503 not ready / shutting down. SIGTERM drains: /readyz turns
503, new requests are refused, requests in flight finish (up to --grace-seconds), then it exits.

Why the stdlib ``ThreadingHTTPServer`` and not an ASGI stack: inference here is blocking torch
code, one thread per request with a hard concurrency bound is the honest model for it, and it adds
no dependency to the trainer image (prometheus_client is already there). It is not meant for
high-throughput serving: that is what ``engine: vllm`` is for.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from finetune_trainer.serve_model import (
    GenerationParams,
    GenerationStream,
    LoadedModel,
    RequestError,
    load_run,
)
from finetune_trainer.storage import open_store

__all__ = ["InferenceServer", "ServerSettings", "cli"]

log = logging.getLogger("finetune_trainer.serve")

POST_ROUTES = ("/v1/completions", "/v1/chat/completions", "/v1/classify")
GET_ROUTES = ("/healthz", "/readyz", "/metrics", "/v1/models")


@dataclass(frozen=True)
class ServerSettings:
    """Command-line settings of ``serve`` (see ``cli --help``)."""

    model_uri: str
    host: str = "0.0.0.0"
    port: int = 8000
    max_concurrency: int = 4
    max_body_bytes: int = 1024 * 1024
    max_tokens_limit: int = 1024
    max_batch: int = 64
    grace_seconds: float = 30.0
    body_timeout_seconds: float = 30.0
    cache_dir: str | None = None
    s3_endpoint: str | None = None
    device: str | None = None


class ApiError(Exception):
    """An HTTP error answered in the OpenAI error shape."""

    TYPES = {
        400: "invalid_request_error",
        404: "invalid_request_error",
        405: "invalid_request_error",
        411: "invalid_request_error",
        413: "invalid_request_error",
        429: "rate_limit_error",
        500: "server_error",
        503: "server_error",
    }

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.TYPES.get(self.status, "invalid_request_error"),
                "param": self.param,
                "code": self.code,
            }
        }


class Metrics:
    """The server's Prometheus series, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.duration = Histogram(
            "finetune_inference_request_duration_seconds",
            "Time to answer a request, by route (streams: until the last chunk).",
            ["route"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.tokens = Counter(
            "finetune_inference_tokens_generated",
            "Completion tokens generated.",
            registry=self.registry,
        )
        self.errors = Counter(
            "finetune_inference_errors",
            "Requests answered with an HTTP error status, by route and status code.",
            ["route", "code"],
            registry=self.registry,
        )
        self.model_info = Gauge(
            "finetune_inference_model_info",
            "The loaded model (value 1): its task and run id.",
            ["task", "run_id"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "finetune_inference_requests_in_flight",
            "Inference requests being processed.",
            registry=self.registry,
        )
        self.load_seconds = Gauge(
            "finetune_inference_model_load_seconds",
            "Time it took to download and load the model.",
            registry=self.registry,
        )


def _route_label(path: str) -> str:
    return path if path in POST_ROUTES or path in GET_ROUTES else "other"


# ------------------------------------------------------------------------------- validation


def _get(body: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise ApiError(400, f"'{name}' must be a number, not a boolean", param=name)
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ApiError(400, f"'{name}' must be of type {names}", param=name)
    return value


def _params(body: dict[str, Any], limit: int) -> GenerationParams:
    max_tokens = _get(body, "max_completion_tokens", int, None)
    if max_tokens is None:
        max_tokens = _get(body, "max_tokens", int, 16)
    if not 1 <= max_tokens <= limit:
        raise ApiError(
            400,
            f"'max_tokens' must be between 1 and {limit} (this server's limit)",
            param="max_tokens",
        )
    temperature = float(_get(body, "temperature", (int, float), 1.0))
    if not 0 <= temperature <= 2:
        raise ApiError(400, "'temperature' must be between 0 and 2", param="temperature")
    top_p = float(_get(body, "top_p", (int, float), 1.0))
    if not 0 < top_p <= 1:
        raise ApiError(400, "'top_p' must be greater than 0 and at most 1", param="top_p")
    if _get(body, "n", int, 1) != 1:
        raise ApiError(400, "'n' other than 1 is not supported by this server", param="n")
    for unsupported in ("logprobs", "echo", "best_of", "tools", "functions"):
        value = body.get(unsupported)
        if value and not (unsupported == "best_of" and value == 1):
            raise ApiError(
                400, f"'{unsupported}' is not supported by this server", param=unsupported
            )
    stop = body.get("stop")
    if stop is None:
        stops: list[str] = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= 4:
        stops = list(stop)
    else:
        raise ApiError(400, "'stop' must be a string or a list of up to 4 strings", param="stop")
    seed = _get(body, "seed", int, None)
    return GenerationParams(max_tokens, temperature, top_p, [s for s in stops if s], seed)


def _messages(body: dict[str, Any]) -> list[dict[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(
            400, "'messages' must be a non-empty list of {role, content}", param="messages"
        )
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise ApiError(
                400,
                f"messages[{i}] must be an object with role system, user or assistant",
                param=f"messages[{i}].role",
            )
        content = m.get("content")
        if isinstance(content, list):  # OpenAI content parts: keep the text parts
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise ApiError(
                    400,
                    f"messages[{i}].content: only text parts are supported",
                    param=f"messages[{i}].content",
                )
            content = "".join(str(p.get("text", "")) for p in content)
        if not isinstance(content, str):
            raise ApiError(
                400, f"messages[{i}].content must be a string", param=f"messages[{i}].content"
            )
        out.append({"role": str(m["role"]), "content": content})
    return out


# ------------------------------------------------------------------------------------ server


class InferenceServer:
    """The HTTP server and its model; ``start()`` returns at once, the model loads in background."""

    def __init__(
        self,
        settings: ServerSettings,
        *,
        loader: Callable[[ServerSettings], LoadedModel] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.model: LoadedModel | None = None
        self.state = "loading"  # loading | ready | failed | draining
        self.error: str | None = None
        self._loader = loader or _default_loader
        self._slots = threading.BoundedSemaphore(settings.max_concurrency)
        self._active = 0
        self._active_lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        handler = type("Handler", (_Handler,), {"app": self})
        self._httpd = ThreadingHTTPServer((self.settings.host, self.settings.port), handler)
        self._httpd.daemon_threads = True
        serve = threading.Thread(target=self._httpd.serve_forever, name="http", daemon=True)
        load = threading.Thread(target=self._load, name="model-load", daemon=True)
        self._threads = [serve, load]
        serve.start()
        load.start()
        log.info("serving on %s (model loading from %s)", self.url, self.settings.model_uri)

    @property
    def port(self) -> int:
        assert self._httpd is not None, "start() first"
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = self.settings.host
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{self.port}"

    def _load(self) -> None:
        t0 = time.monotonic()
        try:
            model = self._loader(self.settings)
        except Exception as exc:
            log.exception("loading %s failed", self.settings.model_uri)
            self.error = f"{type(exc).__name__}: {exc}"
            self.state = "failed"
            return
        self.metrics.load_seconds.set(time.monotonic() - t0)
        self.metrics.model_info.labels(model.task, model.descriptor.run_id).set(1)
        self.model = model
        if self.state == "loading":
            self.state = "ready"
        log.info(
            "model %s (%s) ready in %.1fs",
            model.descriptor.run_id,
            model.task,
            time.monotonic() - t0,
        )

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while self.state == "loading" and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.state != "ready":
            raise RuntimeError(f"server not ready: {self.state} {self.error or ''}")

    def shutdown(self, grace: float | None = None) -> None:
        """Drain: refuse new work, let requests in flight finish (up to grace), stop serving."""
        grace = self.settings.grace_seconds if grace is None else grace
        self.state = "draining"
        deadline = time.monotonic() + grace
        while self.active_requests() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        log.info("stopped (%d requests still in flight)", self.active_requests())

    def active_requests(self) -> int:
        with self._active_lock:
            return self._active

    # -- admission -----------------------------------------------------------------------------

    def admit(self) -> None:
        if self.state == "draining":
            raise ApiError(
                503, "the server is shutting down; retry on another replica", code="shutting_down"
            )
        if self.state == "failed":
            raise ApiError(503, f"the model failed to load: {self.error}", code="model_load_failed")
        if self.model is None:
            raise ApiError(
                503,
                "the model is still loading; retry when /readyz answers 200",
                code="model_not_ready",
            )
        if not self._slots.acquire(blocking=False):
            raise ApiError(
                429,
                f"the server is busy ({self.settings.max_concurrency} requests in progress); "
                "retry shortly",
                code="rate_limit_exceeded",
            )
        with self._active_lock:
            self._active += 1
        self.metrics.in_flight.inc()

    def release(self) -> None:
        with self._active_lock:
            self._active -= 1
        self.metrics.in_flight.dec()
        self._slots.release()


def _default_loader(settings: ServerSettings) -> LoadedModel:
    store = open_store(None, endpoint_url=settings.s3_endpoint)
    cache = settings.cache_dir or tempfile.mkdtemp(prefix="finetune-serve-")
    return load_run(settings.model_uri, store, cache, device=settings.device)


class _Handler(BaseHTTPRequestHandler):
    """One request: routing, limits, JSON in/out, SSE streams, metrics."""

    app: InferenceServer
    protocol_version = "HTTP/1.1"
    server_version = "finetune-serve/0.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s - %s", self.address_string(), format % args)

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.app.settings.body_timeout_seconds)

    # -- plumbing ------------------------------------------------------------------------------

    def _send_json(self, status: int, doc: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, err: ApiError) -> None:
        headers = {"Retry-After": "1"} if err.status in (429, 503) else {}
        if err.status in (411, 413):
            self.close_connection = True  # the unread body must not be parsed as a request
            headers["Connection"] = "close"
        self._send_json(err.status, err.body(), headers)

    def _dispatch(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        route = _route_label(path)
        metrics = self.app.metrics
        t0 = time.perf_counter()
        status = 500
        try:
            status = self._handle(method, path)
        except ApiError as err:
            status = err.status
            self._send_error(err)
        except (BrokenPipeError, ConnectionResetError):
            status = 499  # the client went away
        except Exception as exc:
            log.exception("%s %s failed", method, path)
            status = 500
            with contextlib.suppress(OSError):
                self._send_error(ApiError(500, f"internal error: {type(exc).__name__}: {exc}"))
        finally:
            metrics.duration.labels(route).observe(time.perf_counter() - t0)
            if status >= 400:
                metrics.errors.labels(route, str(status)).inc()

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # -- routes --------------------------------------------------------------------------------

    def _handle(self, method: str, path: str) -> int:
        if path not in POST_ROUTES and path not in GET_ROUTES:
            raise ApiError(
                404,
                f"no route {path}; routes: {', '.join(POST_ROUTES + GET_ROUTES)}",
                code="not_found",
            )
        expected = "POST" if path in POST_ROUTES else "GET"
        if method != expected:
            raise ApiError(
                405, f"{path} accepts {expected}, not {method}", code="method_not_allowed"
            )
        if method == "GET":
            return self._get(path)
        length = self._content_length()
        app = self.app
        app.admit()
        try:
            body = self._read_json(length)
            if path == "/v1/classify":
                return self._classify(body)
            return self._complete(body, chat=path == "/v1/chat/completions")
        finally:
            app.release()

    def _get(self, path: str) -> int:
        app = self.app
        if path == "/healthz":
            self._send_json(200, {"status": "ok"})
            return 200
        if path == "/metrics":
            data = generate_latest(app.metrics.registry)
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return 200
        model = app.model
        if path == "/v1/models":
            cards = [] if model is None else [_model_card(model)]
            self._send_json(200, {"object": "list", "data": cards})
            return 200
        # /readyz
        if app.state == "ready" and model is not None:
            self._send_json(
                200, {"status": "ready", "model": model.descriptor.run_id, "task": model.task}
            )
            return 200
        doc: dict[str, Any] = {"status": app.state}
        if app.error:
            doc["error"] = app.error
        self._send_json(503, doc)
        return 503

    def _content_length(self) -> int:
        raw = self.headers.get("Content-Length")
        if raw is None:
            raise ApiError(
                411,
                "a request body with a Content-Length header is required",
                code="length_required",
            )
        try:
            length = int(raw)
        except ValueError:
            raise ApiError(400, f"invalid Content-Length {raw!r}") from None
        if length < 0:
            raise ApiError(400, f"invalid Content-Length {raw!r}")
        limit = self.app.settings.max_body_bytes
        if length > limit:
            raise ApiError(
                413,
                f"request body of {length} bytes is over this server's limit of {limit} bytes",
                code="request_too_large",
            )
        return length

    def _read_json(self, length: int) -> dict[str, Any]:
        try:
            raw = self.rfile.read(length)
        except TimeoutError:
            self.close_connection = True
            raise ApiError(400, "timed out reading the request body") from None
        if len(raw) < length:
            self.close_connection = True
            raise ApiError(400, "the request body is shorter than its Content-Length")
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        return body

    def _model(self) -> LoadedModel:
        model = self.app.model
        assert model is not None  # admit() checked
        return model

    def _classify(self, body: dict[str, Any]) -> int:
        model = self._model()
        if model.task == "causal-lm":
            raise ApiError(
                400,
                "this server serves a causal-lm model: /v1/classify is for sequence- and "
                "token-classification runs; use /v1/completions or /v1/chat/completions",
                code="unsupported_for_task",
            )
        inputs = body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs:
            raise ApiError(
                400, "'input' must be a string or a non-empty list of strings", param="input"
            )
        limit = self.app.settings.max_batch
        if len(inputs) > limit:
            raise ApiError(
                400, f"'input' has {len(inputs)} items; at most {limit} per request", param="input"
            )
        for i, item in enumerate(inputs):
            ok = isinstance(item, str) or (
                model.task == "token-classification"
                and isinstance(item, list)
                and all(isinstance(w, str) for w in item)
            )
            if not ok:
                raise ApiError(400, f"input[{i}] must be a string", param=f"input[{i}]")
        try:
            results = model.classify(inputs)
        except RequestError as exc:
            raise ApiError(400, str(exc), param=exc.param) from None
        self._send_json(
            200,
            {
                "object": "list",
                "model": model.descriptor.run_id,
                "task": model.task,
                "data": [r.to_json(i) for i, r in enumerate(results)],
            },
        )
        return 200

    def _complete(self, body: dict[str, Any], *, chat: bool) -> int:
        model = self._model()
        if model.task != "causal-lm":
            raise ApiError(
                400,
                f"this server serves a {model.task} model: use /v1/classify",
                code="unsupported_for_task",
            )
        params = _params(body, self.app.settings.max_tokens_limit)
        stream = bool(_get(body, "stream", bool, False))
        try:
            if chat:
                prompts = [model.encode_chat(_messages(body))]
            else:
                prompt = body.get("prompt")
                if isinstance(prompt, str):
                    prompt = [prompt]
                if (
                    not isinstance(prompt, list)
                    or not prompt
                    or not all(isinstance(p, str) for p in prompt)
                ):
                    raise ApiError(
                        400, "'prompt' must be a string or a list of strings", param="prompt"
                    )
                if stream and len(prompt) > 1:
                    raise ApiError(400, "streaming takes a single prompt", param="prompt")
                if len(prompt) > self.app.settings.max_batch:
                    raise ApiError(
                        400,
                        f"at most {self.app.settings.max_batch} prompts per request",
                        param="prompt",
                    )
                prompts = [model.encode_prompt(p) for p in prompt]
            for ids in prompts:
                model.check_length(ids, params)
            first = model.generate(prompts[0], params) if stream else None
        except RequestError as exc:
            raise ApiError(400, str(exc), param=exc.param) from None
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        name = model.descriptor.run_id
        if first is not None:
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return self._stream(first, rid, created, name, chat=chat, include_usage=include_usage)
        choices = []
        prompt_tokens = completion_tokens = 0
        for i, ids in enumerate(prompts):  # one after another: the concurrency bound holds
            run = model.generate(ids, params)
            text = run.text()
            self.app.metrics.tokens.inc(run.completion_tokens)
            prompt_tokens += run.prompt_tokens
            completion_tokens += run.completion_tokens
            if chat:
                choices.append(
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": run.finish_reason,
                    }
                )
            else:
                choices.append(
                    {"index": i, "text": text, "logprobs": None, "finish_reason": run.finish_reason}
                )
        self._send_json(
            200,
            {
                "id": rid,
                "object": "chat.completion" if chat else "text_completion",
                "created": created,
                "model": name,
                "choices": choices,
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            },
        )
        return 200

    def _stream(
        self,
        run: GenerationStream,
        rid: str,
        created: int,
        name: str,
        *,
        chat: bool,
        include_usage: bool,
    ) -> int:
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(delta: str | None, finish: str | None, role: bool = False) -> dict[str, Any]:
            if chat:
                d: dict[str, Any] = {"role": "assistant"} if role else {}
                if delta is not None:
                    d["content"] = delta
                choice: dict[str, Any] = {"index": 0, "delta": d, "finish_reason": finish}
            else:
                choice = {
                    "index": 0,
                    "text": delta or "",
                    "logprobs": None,
                    "finish_reason": finish,
                }
            return {
                "id": rid,
                "object": obj,
                "created": created,
                "model": name,
                "choices": [choice],
            }

        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

        def send(doc: Any) -> None:
            payload = doc if isinstance(doc, str) else json.dumps(doc)
            self.wfile.write(f"data: {payload}\n\n".encode())
            self.wfile.flush()

        try:
            if chat:
                send(chunk(None, None, role=True))
            for delta in run:
                send(chunk(delta, None))
            send(chunk(None if chat else "", run.finish_reason))
            if include_usage:
                usage = {
                    "prompt_tokens": run.prompt_tokens,
                    "completion_tokens": run.completion_tokens,
                    "total_tokens": run.prompt_tokens + run.completion_tokens,
                }
                send(
                    {
                        "id": rid,
                        "object": obj,
                        "created": created,
                        "model": name,
                        "choices": [],
                        "usage": usage,
                    }
                )
            send("[DONE]")
        except (BrokenPipeError, ConnectionResetError):
            run.cancel()
            raise
        except Exception as exc:  # headers are out: report the failure in the stream itself
            log.exception("stream failed")
            send(ApiError(500, f"generation failed: {type(exc).__name__}: {exc}").body())
            send("[DONE]")
            return 500
        finally:
            self.app.metrics.tokens.inc(run.completion_tokens)
        return 200


def _model_card(model: LoadedModel) -> dict[str, Any]:
    return {
        "id": model.descriptor.run_id,
        "object": "model",
        "owned_by": "finetune-operator",
        "task": model.task,
    }


# --------------------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m finetune_trainer serve",
        description="Serve a published fine-tuning run (runs/<runId>/ with finetune.json) over HTTP.",
    )
    p.add_argument(
        "--model", required=True, help="run URI: s3://bucket/.../runs/<runId>/ or a local directory"
    )
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--max-concurrency", type=int, default=4, help="requests processed at once; more get 429"
    )
    p.add_argument("--max-body-bytes", type=int, default=1024 * 1024, help="larger bodies get 413")
    p.add_argument("--max-tokens-limit", type=int, default=1024, help="upper bound of max_tokens")
    p.add_argument("--max-batch", type=int, default=64, help="inputs/prompts per request")
    p.add_argument("--grace-seconds", type=float, default=30.0, help="drain time on SIGTERM")
    p.add_argument(
        "--cache-dir", default=os.environ.get("FINETUNE_SERVE_CACHE"), help="download directory"
    )
    p.add_argument(
        "--s3-endpoint",
        default=os.environ.get("FINETUNE_S3_ENDPOINT") or None,
        help="S3-compatible endpoint URL (MinIO, Ceph, the embedded server); default AWS",
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    return p


def cli(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.max_concurrency < 1 or args.max_body_bytes < 1 or args.max_tokens_limit < 1:
        print("serve: --max-concurrency, --max-body-bytes and --max-tokens-limit must be >= 1")
        return 2
    logging.basicConfig(
        level=os.environ.get("FINETUNE_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    settings = ServerSettings(
        model_uri=args.model,
        host=args.host,
        port=args.port,
        max_concurrency=args.max_concurrency,
        max_body_bytes=args.max_body_bytes,
        max_tokens_limit=args.max_tokens_limit,
        max_batch=args.max_batch,
        grace_seconds=args.grace_seconds,
        cache_dir=args.cache_dir,
        s3_endpoint=args.s3_endpoint,
        device=args.device,
    )
    server = InferenceServer(settings)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    print(f"finetune serve: listening on {server.url}", flush=True)
    code = 0
    while not stop.wait(0.2):
        if server.state == "failed":
            log.error("exiting: the model could not be loaded: %s", server.error)
            code = 1
            break
    log.info("shutting down: draining %d request(s)", server.active_requests())
    server.shutdown()
    return code
