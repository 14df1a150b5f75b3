"""A real OpenAI-compatible HTTP server on 127.0.0.1 with scripted replies, for pipeline tests.

`server.script(body)` gets each request's JSON body and returns an action:

    "text"                      -> 200, that text as the assistant message
    ("reasoning", r, content)   -> 200, `reasoning_content` r apart from the content
    ("status", 500)             -> that HTTP status
    ("garbage", b"...")         -> 200 with a body that is not a chat completion
    ("drop", None)              -> the connection closes without a reply
    ("sleep", seconds)          -> wait, then reply "late"

`prompt_text(body)` is the text of the last user message. The server records every body
it got (`server.requests`) and the most requests it held at once (`max_in_flight`).
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


def prompt_text(body: dict[str, Any]) -> str:
    content = body["messages"][-1]["content"]
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if part.get("type") == "text")


def image_count(body: dict[str, Any]) -> int:
    content = body["messages"][-1]["content"]
    return 0 if isinstance(content, str) else sum(p["type"] == "image_url" for p in content)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        server: FakeOpenAIServer = self.server  # type: ignore[assignment]
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        with server.lock:
            server.requests.append(body)
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
        try:
            if server.latency_s:
                time.sleep(server.latency_s)
            self._act(server.script(body))
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            with server.lock:
                server.in_flight -= 1

    def _act(self, action: Any) -> None:
        kind = action[0] if isinstance(action, tuple) else "text"
        if kind == "sleep":
            time.sleep(action[1])
            action, kind = "late", "text"
        if kind == "status":
            self._send(action[1], b'{"error": "scripted failure"}')
        elif kind == "garbage":
            self._send(200, action[1])
        elif kind == "drop":
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
        else:
            message = {"role": "assistant", "content": str(action)}
            if kind == "reasoning":
                message = {
                    "role": "assistant",
                    "reasoning_content": action[1],
                    "content": action[2],
                }
            reply = {"object": "chat.completion", "choices": [{"index": 0, "message": message}]}
            self._send(200, json.dumps(reply).encode())

    def _send(self, status: int, payload: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class FakeOpenAIServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.script: Callable[[dict[str, Any]], Any] = lambda body: "ok"
        self.latency_s = 0.0
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def start(self) -> FakeOpenAIServer:
        self._thread.start()
        return self

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.max_in_flight = 0
        self.script = lambda body: "ok"
        self.latency_s = 0.0

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
