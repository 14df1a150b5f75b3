"""A real OpenAI-compatible HTTP server whose replies a function decides: the one local
server mmr's tests, `benchmarks/rewards.py` and the demo's rule teacher
(`mmr.data.teacher_server`) run, so each talks to the same endpoint code as a vLLM server
would be talked to, over real sockets.

    server = OpenAIServer(lambda body: "CORRECT").start()   # base_url for clients
    ...
    server.stop()

`script(body)` gets each chat request's JSON body (or `view(body)`, e.g. `prompt_text`
for a judge that only reads the prompt) and returns an action:

    "text"                      -> 200, that text as the assistant message
    ("reasoning", r, content)   -> 200, `reasoning_content` r apart from the content
    ("status", 500[, message])  -> that HTTP status with an OpenAI-style error body
    ("garbage", b"...")         -> 200 with a body that is not a chat completion
    ("drop", None)              -> the connection closes without a reply
    ("sleep", seconds)          -> wait, then reply as `server.after_sleep` says

`latency_s` delays every reply. The server records each request (`requests`: path,
headers and body; `bodies`: the bodies) and the most requests it held at once
(`max_in_flight`). Endpoints: POST /v1/chat/completions, GET /v1/models. Standard
library only; one thread per request (ThreadingHTTPServer), so a client's concurrency
is real.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["OpenAIServer", "prompt_text"]

Action = Any
MODEL_NAME = "mmr-local"


def prompt_text(body: dict[str, Any]) -> str:
    """The text of the last message (its text parts, for multimodal content)."""
    content = (body.get("messages") or [{}])[-1].get("content", "")
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if part.get("type") == "text")


class OpenAIServer(ThreadingHTTPServer):
    """`OpenAIServer(script).start()`; `base_url` for clients; `reset()`, `stop()`."""

    daemon_threads = True
    request_queue_size = 256

    def __init__(
        self,
        script: Callable[[Any], Action] | None = None,
        *,
        reply: str = "ok",
        view: Callable[[dict[str, Any]], Any] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__((host, port), _Handler)
        self._script, self.reply, self.view = script, reply, view
        self.lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self.generation = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._defaults()

    def _defaults(self) -> None:
        reply = self.reply
        self.script: Callable[[Any], Action] = self._script or (lambda request: reply)
        self.after_sleep: Action = reply
        self.latency_s = 0.0

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def bodies(self) -> list[dict[str, Any]]:
        """The JSON bodies of the requests received, in order."""
        return [r["body"] for r in self.requests]

    def action_for(self, body: dict[str, Any]) -> Action:
        return self.script(self.view(body) if self.view else body)

    def start(self) -> OpenAIServer:
        self._thread.start()
        return self

    def reset(self) -> None:
        """Forget what was received and go back to the constructor's script."""
        with self.lock:
            self.requests.clear()
            # Requests left over from an earlier test (still sleeping) are not counted.
            self.generation += 1
            self.in_flight = 0
            self.max_in_flight = 0
        self._defaults()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers do
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms stalls

    def log_message(self, *args: Any) -> None:  # clients report; a line per request drowns it
        pass

    def do_GET(self) -> None:
        if self.path.rstrip("/") != "/v1/models":
            return self._error(404, f"no route {self.path}")
        self._send(200, {"object": "list", "data": [{"id": MODEL_NAME, "object": "model"}]})

    def do_POST(self) -> None:
        server: OpenAIServer = self.server  # type: ignore[assignment]
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path.rstrip("/") != "/v1/chat/completions":
            return self._error(404, f"no route {self.path}")
        try:
            body = json.loads(raw or b"{}")
        except ValueError as err:
            return self._error(400, f"bad request: {err}")
        with server.lock:
            # headers: case-insensitive, as HTTP names are (clients send "authorization")
            server.requests.append({"path": self.path, "headers": self.headers, "body": body})
            generation = server.generation
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
        try:
            if server.latency_s:
                time.sleep(server.latency_s)
            action = server.action_for(body)
            if isinstance(action, tuple) and action[0] == "sleep":
                time.sleep(action[1])
                action = server.after_sleep
            self._act(action, body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (its timeout): expected in the failure tests
        finally:
            with server.lock:
                if generation == server.generation:
                    server.in_flight -= 1

    def _act(self, action: Action, body: dict[str, Any]) -> None:
        kind = action[0] if isinstance(action, tuple) else "text"
        if kind == "status":
            self._error(action[1], action[2] if len(action) > 2 else "scripted failure")
        elif kind == "garbage":
            self._send(200, action[1])
        elif kind == "drop":
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
        else:
            message = {"role": "assistant", "content": str(action)}
            if kind == "reasoning":
                message = {"role": "assistant", "reasoning_content": action[1],
                           "content": action[2]}  # fmt: skip
            self._send(200, {
                "id": "chatcmpl-local", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model", MODEL_NAME),
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            })  # fmt: skip

    def _error(self, status: int, message: str) -> None:
        self._send(status, {"error": {"message": message, "type": "local_server", "code": status}})

    def _send(self, status: int, payload: dict[str, Any] | bytes) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
