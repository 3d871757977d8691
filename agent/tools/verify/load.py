"""The drill's client: OpenAI-style requests at a fixed concurrency, measured from the client.

Success is judged from what the client receives, not the status line: Dynamo answers HTTP 200
and then reports a worker lost mid-stream as an in-band `{"error": ...}` event, so a stream
with an error event, without a token, or cut before `[DONE]` is a failure.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from array import array
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from agent.core.textsafe import parse_json

PROMPT = "Count from one to twenty, one number per line."
MAX_BODY = 1 << 20  # one answer; a bigger one is cut and judged on what arrived
MAX_EVENT_DEPTH = 32  # an OpenAI chunk nests 5 levels; a deeper one used to crash the drill
# Token chunks a stream may carry per max_tokens asked for (and a few more for role, usage
# and finish chunks). A frontend that streams far more ignores max_tokens: the request is a
# bad response, and the stream is left there, so each request's time and memory stay bounded
# (a flooding frontend took verify to 465 MB keeping every gap).
CHUNKS_PER_TOKEN = 4
EXTRA_CHUNKS = 16

OK = "ok"
TIMEOUT = "timeout"
CONNECT_ERROR = "connect_error"
IN_BAND_ERROR = "in_band_error"
BAD_RESPONSE = "bad_response"


@dataclass
class RequestRecord:
    """One request as the client saw it; times are seconds since the drill started."""

    phase: str
    start: float
    end: float = 0.0
    outcome: str = OK
    status: int = 0
    ttft: float | None = None
    # Between consecutive token chunks; 8 bytes each, at most CHUNKS_PER_TOKEN * max_tokens +
    # EXTRA_CHUNKS of them.
    gaps: array[float] = field(default_factory=lambda: array("d"))
    tokens: int = 0
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome == OK

    @property
    def latency(self) -> float:
        return self.end - self.start

    @property
    def error_type(self) -> str:
        """`http_503`, `in_band_error`, `timeout`, ...; empty when it succeeded."""
        return "" if self.ok else self.outcome


@dataclass(frozen=True)
class LoadSpec:
    frontend_url: str
    model: str
    max_tokens: int = 16
    stream: bool = True
    endpoint: str = "chat"  # or "completions"
    request_timeout: float = 30.0
    new_connections: bool = False  # a fresh TCP connection per request instead of keep-alive


def _body(spec: LoadSpec) -> dict[str, Any]:
    body: dict[str, Any] = {"model": spec.model, "max_tokens": spec.max_tokens, "stream": spec.stream}
    if spec.endpoint == "chat":
        body["messages"] = [{"role": "user", "content": PROMPT}]
    else:
        body["prompt"] = PROMPT
    if spec.stream:
        # Dynamo and vLLM put the token count in a last chunk when asked; otherwise chunks count.
        body["stream_options"] = {"include_usage": True}
    return body


def _chunk_text(chunk: dict[str, Any]) -> str:
    text = ""
    for choice in chunk.get("choices") or []:
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta")
        if isinstance(delta, dict) and isinstance(delta.get("content"), str):
            text += delta["content"]
        elif isinstance(choice.get("text"), str):
            text += choice["text"]
    return text


def _usage_tokens(payload: dict[str, Any]) -> int | None:
    usage = payload.get("usage")
    if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
        return int(usage["completion_tokens"])
    return None


async def _read_stream(
    response: aiohttp.ClientResponse, record: RequestRecord, clock: Any, max_tokens: int = 16
) -> None:
    """Reads SSE events as they arrive, timing the first token and the gaps between tokens.
    Bounded: MAX_BODY bytes, events parsed within MAX_EVENT_DEPTH, at most
    CHUNKS_PER_TOKEN * max_tokens + EXTRA_CHUNKS token chunks."""
    buffer = b""
    size = 0
    last_token_at: float | None = None
    chunks_with_text = 0
    max_chunks = CHUNKS_PER_TOKEN * max_tokens + EXTRA_CHUNKS
    usage: int | None = None
    done = False
    async for piece in response.content.iter_any():
        size += len(piece)
        if size > MAX_BODY:
            record.outcome, record.error = BAD_RESPONSE, f"answer larger than {MAX_BODY} bytes"
            return
        buffer += piece
        start = 0
        while True:  # by offset: splitting the rest off each time is quadratic in the events
            end = buffer.find(b"\n\n", start)
            if end < 0:
                break
            event, start = buffer[start:end], end + 2
            for line in event.split(b"\n"):
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    done = True
                    continue
                chunk, why = parse_json(payload, max_depth=MAX_EVENT_DEPTH)
                if why:
                    record.outcome, record.error = BAD_RESPONSE, f"a stream event is not usable JSON: {why}"
                    return
                if not isinstance(chunk, dict):
                    continue
                if "error" in chunk:
                    record.outcome = IN_BAND_ERROR
                    record.error = json.dumps(chunk["error"])[:200]
                    return
                usage = _usage_tokens(chunk) or usage
                if _chunk_text(chunk):
                    now = clock()
                    chunks_with_text += 1
                    if chunks_with_text > max_chunks:
                        record.tokens = chunks_with_text
                        record.outcome = BAD_RESPONSE
                        record.error = f"more than {max_chunks} token chunks for max_tokens={max_tokens}"
                        return
                    if last_token_at is None:
                        record.ttft = now - record.start
                    else:
                        record.gaps.append(now - last_token_at)
                    last_token_at = now
        buffer = buffer[start:]
    record.tokens = usage if usage is not None else chunks_with_text
    if not done:
        record.outcome, record.error = BAD_RESPONSE, "stream ended without [DONE]"
    elif not chunks_with_text:
        record.outcome, record.error = BAD_RESPONSE, "stream ended without a token"


async def send(session: aiohttp.ClientSession, spec: LoadSpec, phase: str, clock: Any) -> RequestRecord:
    """One request; never raises: every failure is an outcome on the record."""
    path = "/v1/chat/completions" if spec.endpoint == "chat" else "/v1/completions"
    record = RequestRecord(phase=phase, start=clock())
    headers = {"x-request-id": f"verify-{uuid.uuid4()}", "Content-Type": "application/json"}
    try:
        async with asyncio.timeout(spec.request_timeout):
            # Never redirected: verify talks only to --frontend-url (a redirect to another host
            # was followed, 740 times over a drill).
            async with session.post(
                spec.frontend_url + path, json=_body(spec), headers=headers, allow_redirects=False
            ) as response:
                record.status = response.status
                if 300 <= response.status < 400:
                    record.outcome = f"http_{response.status}"
                    location = response.headers.get("Location", "")[:120]
                    record.error = (
                        f"redirect to {location!r} not followed (verify talks only to --frontend-url)"
                    )
                elif response.status != 200:
                    record.outcome = f"http_{response.status}"
                    record.error = (await response.content.read(300)).decode("utf-8", "replace")
                elif spec.stream:
                    await _read_stream(response, record, clock, spec.max_tokens)
                else:
                    raw = await response.content.read(MAX_BODY)
                    payload, why = parse_json(raw, max_depth=MAX_EVENT_DEPTH)
                    text = _chunk_text(payload) if isinstance(payload, dict) else ""
                    if why or (not text and not (isinstance(payload, dict) and payload.get("choices"))):
                        record.outcome, record.error = BAD_RESPONSE, f"unusable body: {why or 'no choices'}"
                    else:
                        record.ttft = clock() - record.start  # the whole answer is the first token
                        record.tokens = _usage_tokens(payload) or 1
    except TimeoutError:
        record.outcome, record.error = TIMEOUT, f"no complete answer within {spec.request_timeout:g}s"
    except aiohttp.ClientConnectionError as exc:
        record.outcome = BAD_RESPONSE if record.status else CONNECT_ERROR
        record.error = f"{type(exc).__name__}: {exc}"[:200]
    except aiohttp.ClientError as exc:
        record.outcome, record.error = BAD_RESPONSE, f"{type(exc).__name__}: {exc}"[:200]
    except (ValueError, RecursionError, UnicodeError) as exc:
        # Whatever else a hostile answer triggers is that request's bad response: the drill
        # goes on and its report is written.
        record.outcome, record.error = BAD_RESPONSE, f"{type(exc).__name__}: {exc}"[:200]
    record.end = clock()
    return record


async def connection_probe(spec: LoadSpec, clock: Any, count: int = 3) -> dict[str, Any]:
    """TTFT of `count` sequential requests on one reused connection and on fresh ones.

    Why: a server that leaves Nagle on holds its first small write after the headers until
    the client ACKs them, and a client on a warm connection delays that ACK (40 ms on
    Linux), so users on keep-alive connections see a TTFT the server's histogram never
    records. Measuring both ways shows whether that is happening, not just that numbers differ.
    """
    out: dict[str, Any] = {"requests_each": count}
    for label, fresh in (("keepalive", False), ("new_connection", True)):
        ttfts: list[float] = []
        connector = aiohttp.TCPConnector(limit=1, force_close=fresh)
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=None, sock_connect=5)
        ) as session:
            for _ in range(count + 1):  # the first one opens the reused connection
                record = await send(session, spec, "probe", clock)
                if record.ok and record.ttft is not None:
                    ttfts.append(record.ttft)
        ttfts = ttfts[1:] if len(ttfts) > count else ttfts
        out[f"{label}_ttft_p50"] = round(sorted(ttfts)[len(ttfts) // 2], 6) if ttfts else None
    keep, new = out["keepalive_ttft_p50"], out["new_connection_ttft_p50"]
    out["keepalive_extra_seconds"] = None if keep is None or new is None else round(keep - new, 6)
    return out


class LoadGenerator:
    """C workers, each sending one request after the other until the phase's deadline.

    Bounded: at most `max_requests` over the whole drill, each under `request_timeout`; a
    request belongs to the phase it started in, even when it ends in the next one.
    """

    def __init__(self, spec: LoadSpec, max_requests: int, clock: Any) -> None:
        self.spec = spec
        self.max_requests = max_requests
        self.clock = clock
        self.records: list[RequestRecord] = []
        self.started = 0
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> LoadGenerator:
        connector = aiohttp.TCPConnector(limit=0, force_close=self.spec.new_connections)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=None, sock_connect=5)
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def exhausted(self) -> bool:
        return self.started >= self.max_requests

    async def run_phase(self, phase: str, concurrency: int, deadline: float) -> list[asyncio.Task[None]]:
        """Runs until `deadline` (on the drill clock); returns the workers still finishing a
        request, so the next phase can start on time while they end."""
        assert self._session is not None
        session = self._session

        async def worker() -> None:
            while self.clock() < deadline and not self.exhausted:
                self.started += 1
                record = await send(session, self.spec, phase, self.clock)
                self.records.append(record)
                if not record.ok and record.latency < 0.05:
                    # A refusal comes back at once: pace the retry so a down frontend is not
                    # hammered in a tight loop (and the record count stays meaningful).
                    await asyncio.sleep(0.05)

        tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
        remaining = deadline - self.clock()
        if remaining > 0:
            await asyncio.wait(tasks, timeout=remaining)
        return [task for task in tasks if not task.done()]
