"""A small, deterministic OpenAI-compatible HTTP server for tests: chat completions (with
tool calls, `max_tokens` truncation and streaming), embeddings and usage, answering from a
script the test writes. It runs a real HTTP server on a free loopback port, so the
official `openai` client talks to it exactly as it would to any compatible endpoint.

Token counts are words (whitespace-separated), so a test can predict them; embeddings are
hashed bags of words, so texts that share words are near each other.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

EMBEDDING_DIM = 64


def words(text: str) -> int:
    return len(text.split())


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    total = 0
    for message in messages:
        total += 1 + words(str(message.get("content") or ""))
        for call in message.get("tool_calls") or []:
            total += words(str(call.get("function", {}).get("arguments", "")))
    return total


def embed(text: str) -> list[float]:
    vector = [0.0] * EMBEDDING_DIM
    for word in text.lower().split():
        digest = hashlib.sha1(word.strip(".,;:!?").encode()).digest()
        vector[digest[0] % EMBEDDING_DIM] += 1.0 if digest[1] % 2 else -1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


class FakeOpenAI:
    """The server and its script: `reply`, `call`, `fail` and `stall` queue the next turns;
    `requests` holds every chat request body received, in order."""

    def __init__(self) -> None:
        self.script: deque[dict[str, Any]] = deque()
        self.requests: list[dict[str, Any]] = []
        self.embedding_requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._ids = 0

    # -- the script ------------------------------------------------------------------

    def reply(self, content: str) -> FakeOpenAI:
        self.script.append({"content": content})
        return self

    def call(
        self, name: str, arguments: dict[str, Any] | str, *more: tuple[str, Any]
    ) -> FakeOpenAI:
        """One assistant turn with one or more tool calls (raw strings are sent as is)."""
        calls = [(name, arguments), *more]
        self.script.append({"tool_calls": calls})
        return self

    def fail(self, status: int = 500, times: int = 1) -> FakeOpenAI:
        for _ in range(times):
            self.script.append({"status": status})
        return self

    def stall(self, seconds: float) -> FakeOpenAI:
        """The next request is answered only after `seconds` (to trip client timeouts)."""
        self.script.append({"delay": seconds})
        return self

    # -- lifecycle -------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def start(self) -> FakeOpenAI:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/v1/models":
                    self._json(200, {"object": "list", "data": [{"id": "fake", "object": "model"}]})
                else:
                    self._json(404, {"error": {"message": "not found", "type": "not_found"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                path = self.path.rstrip("/")
                if path == "/v1/embeddings":
                    self._json(200, fake._embeddings(body))
                elif path == "/v1/chat/completions":
                    fake._chat(self, body)
                else:
                    self._json(404, {"error": {"message": "not found", "type": "not_found"}})

            def _json(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that gave up (a timeout test) is not an error here

        self._server = Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- answers ---------------------------------------------------------------------

    def _next_id(self, prefix: str) -> str:
        with self._lock:
            self._ids += 1
            return f"{prefix}{self._ids}"

    def _embeddings(self, body: dict[str, Any]) -> dict[str, Any]:
        self.embedding_requests.append(body)
        inputs = body.get("input", "")
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        tokens = sum(words(t) for t in texts)
        return {
            "object": "list",
            "model": body.get("model", "fake"),
            "data": [
                {"object": "embedding", "index": i, "embedding": embed(t)}
                for i, t in enumerate(texts)
            ],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    def _chat(self, handler: Any, body: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append(body)
            turn = self.script.popleft() if self.script else None
        if turn is None:
            handler._json(400, {"error": {"message": "no scripted reply left", "type": "test"}})
            return
        if "status" in turn:
            handler._json(turn["status"], {"error": {"message": "scripted", "type": "server"}})
            return
        if "delay" in turn:
            time.sleep(turn["delay"])
            with self._lock:
                turn = self.script.popleft() if self.script else {"content": ""}
        message, finish, completion = self._message(turn, body.get("max_tokens"))
        usage = {
            "prompt_tokens": prompt_tokens(body.get("messages", [])),
            "completion_tokens": completion,
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if body.get("stream"):
            self._stream(handler, body, message, finish, usage)
            return
        handler._json(
            200,
            {
                "id": self._next_id("chatcmpl-"),
                "object": "chat.completion",
                "created": 0,
                "model": body.get("model", "fake"),
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": usage,
            },
        )

    def _message(
        self, turn: dict[str, Any], max_tokens: int | None
    ) -> tuple[dict[str, Any], str, int]:
        if "tool_calls" in turn:
            calls: list[dict[str, Any]] = []
            for name, arguments in turn["tool_calls"]:
                text = arguments if isinstance(arguments, str) else json.dumps(arguments)
                calls.append(
                    {
                        "id": self._next_id("call_"),
                        "type": "function",
                        "function": {"name": name, "arguments": text},
                    }
                )
            completion = max(1, sum(words(c["function"]["arguments"]) for c in calls))
            return (
                {"role": "assistant", "content": None, "tool_calls": calls},
                "tool_calls",
                completion,
            )
        content = str(turn.get("content", ""))
        tokens = content.split()
        finish = "stop"
        if max_tokens is not None and len(tokens) > max_tokens:
            content, finish = " ".join(tokens[:max_tokens]), "length"
        return {"role": "assistant", "content": content}, finish, max(1, words(content))

    def _stream(
        self,
        handler: Any,
        body: dict[str, Any],
        message: dict[str, Any],
        finish: str,
        usage: dict[str, int],
    ) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Connection", "close")
        handler.end_headers()
        chunk_id = self._next_id("chatcmpl-")

        def send(delta: dict[str, Any], finish_reason: str | None = None) -> None:
            chunk = {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": 0,
                "model": body.get("model", "fake"),
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            }
            handler.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())

        send({"role": "assistant", "content": ""})
        for i, word in enumerate((message.get("content") or "").split()):
            send({"content": word if i == 0 else " " + word})
        for i, call in enumerate(message.get("tool_calls") or []):
            send({"tool_calls": [{"index": i, **call}]})
        send({}, finish)
        if (body.get("stream_options") or {}).get("include_usage"):
            tail = {"id": chunk_id, "object": "chat.completion.chunk", "created": 0,
                    "model": body.get("model", "fake"), "choices": [], "usage": usage}  # fmt: skip
            handler.wfile.write(f"data: {json.dumps(tail)}\n\n".encode())
        handler.wfile.write(b"data: [DONE]\n\n")
        handler.wfile.flush()
        handler.close_connection = True
