"""An OpenAI-compatible HTTP server for one model (FastAPI; run by ``fastblt serve`` under uvicorn).

Endpoints:
- ``POST /v1/completions``: ``prompt`` (str), ``max_tokens`` (new **bytes**, default 16),
  ``temperature`` (default 1, 0 = greedy), ``top_p``, ``stop`` (str or list, not returned, as in
  OpenAI), ``stream`` (server-sent events, ``data: {...}`` chunks then ``data: [DONE]``), ``seed``;
  extension fields ``method`` (blt, blt-uncached, blt-s, blt-d, blt-dv; default blt),
  ``draft_length``, ``schedule``, ``block_size``, ``unmask``, ``alpha``, ``gamma`` (refused for a
  method that does not take them), ``ignore_eos`` (exactly max_tokens bytes, the paper's
  accounting). The ``usage`` block carries the byte counts and every statistic of
  :func:`fastblt.generate` (NFEs, acceptance, estimated bandwidth (Fast BLT eq. 8), stop_reason).
- ``GET /v1/models``, ``GET /health`` (also counts served / cancelled requests).

One model, one worker thread: requests queue in arrival order and never interleave generation
state. A streaming client that disconnects cancels its generation at the next verified chunk.
Bad requests get a 4xx JSON error ``{"error": {"message", "type", "param", "code"}}``; the body is
read only as JSON (never executed) and capped at ``max_body_bytes``.
"""
from __future__ import annotations

import asyncio
import codecs
import json
import math
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from .generation.api import METHODS, GenerationResult, generate, method_options, prompt_ids
from .model.blt import BLT

EXTENSION_FIELDS = ("draft_length", "schedule", "block_size", "unmask", "alpha", "gamma")
# OpenAI fields we accept only at their default value.
DEFAULT_ONLY = {"n": 1, "best_of": 1, "echo": False, "logprobs": None, "suffix": None, "presence_penalty": 0,
                "frequency_penalty": 0, "logit_bias": None}
KNOWN = {"model", "prompt", "max_tokens", "temperature", "top_p", "stop", "stream", "stream_options", "seed", "user",
         "method", "ignore_eos", *EXTENSION_FIELDS, *DEFAULT_ONLY}


class RequestError(Exception):
    """A client error: HTTP status, message and the offending field."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.message, self.param, self.status, self.code = message, param, status, code


class _Cancelled(Exception):
    pass


def _error(e: RequestError) -> JSONResponse:
    return JSONResponse({"error": {"message": e.message, "type": "invalid_request_error", "param": e.param,
                                   "code": e.code}}, status_code=e.status)


def _number(body: dict[str, Any], key: str, default: float | None, lo: float, hi: float = math.inf,
            lo_open: bool = False, integer: bool = False) -> Any:
    v = body.get(key)
    if v is None:
        return default
    ok_type = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok_type or not math.isfinite(v) or v > hi or v < lo or (lo_open and v == lo):
        kind = "an integer" if integer else "a number"
        raise RequestError(f"{key} must be {kind} in {'(' if lo_open else '['}{lo}, {hi}], got {v!r}", key)
    return v


def parse_request(body: Any, model: BLT, model_id: str) -> dict[str, Any]:
    """Validate an OpenAI completions body → keyword arguments of :func:`fastblt.generate` plus
    ``stream``. Raises RequestError (400, or 404 for another model name)."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    unknown = sorted(set(body) - KNOWN)
    if unknown:
        raise RequestError(f"unknown field(s) {unknown}", unknown[0])
    for key, default in DEFAULT_ONLY.items():
        if body.get(key, default) not in (default, None) and not (key == "logit_bias" and body[key] == {}):
            raise RequestError(f"{key}={body[key]!r} is not supported (only {default!r})", key)
    if body.get("model") not in (None, model_id):
        raise RequestError(f"model {body['model']!r} is not served here; this server serves {model_id!r}", "model",
                           status=404, code="model_not_found")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise RequestError("prompt must be a string (or a list of one string)", "prompt")
    method = body.get("method") or "blt"
    if method not in METHODS:
        raise RequestError(f"unknown method {method!r}; choose from {sorted(METHODS)}", "method")
    options = method_options(method)
    extra = {k: body[k] for k in EXTENSION_FIELDS if body.get(k) is not None}
    refused = sorted(k for k in extra if k not in options)
    if refused:
        raise RequestError(f"method {method} does not take {refused}; its options: {sorted(options)}", refused[0])
    for k in ("draft_length", "block_size"):
        if k in extra:
            _number(extra, k, None, 1, integer=True)
    for k in ("alpha", "gamma"):
        if k in extra:
            _number(extra, k, None, 0)
    max_tokens = _number(body, "max_tokens", 16, 0, integer=True)
    n_prompt = len(prompt_ids(prompt))
    if n_prompt + max_tokens > model.cfg.max_seq_len:
        raise RequestError(f"prompt of {n_prompt - 1} bytes + max_tokens {max_tokens} + BOS exceeds the model's "
                           f"context of {model.cfg.max_seq_len} bytes", "prompt", code="context_length_exceeded")
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else (stop or [])
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise RequestError("stop must be a non-empty string or a list of at most 4 non-empty strings", "stop")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise RequestError(f"seed must be an integer, got {seed!r}", "seed")
    top_p = _number(body, "top_p", 1.0, 0, 1, lo_open=True)
    stream, ignore_eos = body.get("stream", False), body.get("ignore_eos", False)
    for key, v in (("stream", stream), ("ignore_eos", ignore_eos)):
        if not isinstance(v, bool):
            raise RequestError(f"{key} must be true or false", key)
    return {"prompt": prompt, "method": method, "max_new_bytes": max_tokens,
            "temperature": float(_number(body, "temperature", 1.0, 0, 2)), "top_p": None if top_p == 1 else float(top_p),
            "stop": [s.encode() for s in stop], "seed": seed, "stream": stream, "ignore_eos": ignore_eos, **extra}


class StopFilter:
    """Turns the generator's verified bytes into OpenAI text: the stop string is not returned, so
    bytes that may begin one are held back; text is decoded incrementally (UTF-8, errors → U+FFFD)."""

    def __init__(self, stop: list[bytes]):
        self.hold = max((len(s) for s in stop), default=1) - 1
        self.stop, self.data, self.sent = stop, bytearray(), 0
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, chunk: bytes) -> str:
        self.data += chunk
        ends = [len(s) for s in self.stop if self.data.endswith(s)]  # generation stops right after a stop string
        upto = max(self.sent, len(self.data) - max(ends + [self.hold]))
        out, self.sent = bytes(self.data[self.sent:upto]), upto
        return self.decoder.decode(out)

    def finish(self, result: GenerationResult) -> str:
        data = result.bytes
        if result.stop_reason == "stop":
            matched = max((s for s in self.stop if data.endswith(s)), key=len, default=b"")
            data = data[: len(data) - len(matched)]
        out = data[self.sent:] if len(data) > self.sent else b""
        self.sent = max(self.sent, len(data))
        return self.decoder.decode(out, final=True)


def _usage(result: GenerationResult, n_prompt: int) -> dict[str, Any]:
    n = result.stats["new_bytes"]
    return {"prompt_tokens": n_prompt, "completion_tokens": n, "total_tokens": n_prompt + n,
            "stop_reason": result.stop_reason, **result.stats}


def create_app(model: BLT, model_id: str = "fastblt", max_body_bytes: int = 1 << 20) -> FastAPI:
    """The FastAPI app serving ``model`` as ``model_id``. Generation runs on one worker thread."""
    app = FastAPI(title="fastblt", description=__doc__.splitlines()[0])
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastblt-generate")
    counts = {"served": 0, "cancelled": 0, "failed": 0}
    lock = threading.Lock()

    def count(key: str) -> None:
        with lock:
            counts[key] += 1

    @app.exception_handler(RequestError)
    async def _on_request_error(request: Request, e: RequestError) -> JSONResponse:
        return _error(e)

    @app.exception_handler(Exception)
    async def _on_error(request: Request, e: Exception) -> JSONResponse:  # never crash on a request
        return JSONResponse({"error": {"message": f"internal error: {type(e).__name__}: {e}", "type": "server_error",
                                       "param": None, "code": None}}, status_code=500)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_id, "requests": dict(counts)}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": 0, "owned_by": "fastblt"}]}

    async def read_json(request: Request) -> Any:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > max_body_bytes):
            raise RequestError(f"request body over the limit of {max_body_bytes} bytes", status=413)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body_bytes:
                raise RequestError(f"request body over the limit of {max_body_bytes} bytes", status=413)
        try:
            return json.loads(bytes(body))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RequestError(f"the body is not valid JSON: {e}") from None

    @app.post("/v1/completions")
    async def completions(request: Request):
        kwargs = parse_request(await read_json(request), model, model_id)
        stream = kwargs.pop("stream")
        prompt = kwargs.pop("prompt")
        n_prompt = len(prompt.encode())
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": model_id}
        loop = asyncio.get_running_loop()
        stops = StopFilter(kwargs["stop"])

        def choice(text: str, finish: str | None) -> dict[str, Any]:
            return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}

        def finish_reason(r: GenerationResult) -> str:
            return "length" if r.stop_reason == "length" else "stop"

        if not stream:
            try:
                result = await loop.run_in_executor(worker, lambda: generate(model, prompt, **kwargs))
            except ValueError as e:
                count("failed")
                raise RequestError(str(e)) from None
            count("served")
            return {**head, "choices": [choice(stops.feed(result.bytes) + stops.finish(result), finish_reason(result))],
                    "usage": _usage(result, n_prompt)}

        queue: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()

        def on_bytes(b: bytes) -> None:
            if cancel.is_set():
                raise _Cancelled
            loop.call_soon_threadsafe(queue.put_nowait, ("bytes", b))

        def work() -> None:
            try:
                if cancel.is_set():
                    raise _Cancelled
                result = generate(model, prompt, stream=on_bytes, **kwargs)
                loop.call_soon_threadsafe(queue.put_nowait, ("done", result))
            except _Cancelled:
                count("cancelled")
            except Exception as e:  # reported to the client as an error event
                loop.call_soon_threadsafe(queue.put_nowait, ("error", e))

        async def events():
            future = loop.run_in_executor(worker, work)
            try:
                while True:
                    kind, item = await queue.get()
                    if kind == "bytes":
                        text = stops.feed(item)
                        if text:
                            yield f"data: {json.dumps({**head, 'choices': [choice(text, None)]})}\n\n"
                    elif kind == "done":
                        count("served")
                        chunk = {**head, "choices": [choice(stops.finish(item), finish_reason(item))],
                                 "usage": _usage(item, n_prompt)}
                        yield f"data: {json.dumps(chunk)}\n\n"
                        break
                    else:
                        count("failed")
                        err = {"error": {"message": f"{type(item).__name__}: {item}", "type": "server_error"}}
                        yield f"data: {json.dumps(err)}\n\n"
                        break
                yield "data: [DONE]\n\n"
            finally:  # also on client disconnect: stop the generation at its next chunk
                cancel.set()
                del future

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    app.state.worker, app.state.counts = worker, counts
    return app
