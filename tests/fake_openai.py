"""A real OpenAI-compatible HTTP server on 127.0.0.1 with scripted replies.

Tests (data pipeline, rewards, RL) and `benchmarks/rewards.py` start it in-process and point
mmr's clients at `server.base_url`. `server.script` decides each reply by returning an action:

    "text"                      -> 200, that text as the assistant message
    ("reasoning", r, content)   -> 200, `reasoning_content` r apart from the content
    ("status", 500)             -> that HTTP status
    ("garbage", b"...")         -> 200 with a body that is not a chat completion
    ("drop", None)              -> the connection closes without a reply
    ("sleep", seconds)          -> wait, then reply as `server.after_sleep` says

`FakeOpenAIServer.script` gets each request's JSON body; `FakeJudgeServer.script` gets the
text of the last message (what a judge reads). `server.latency_s` delays every reply. The
server records what it got (`requests`: bodies; the judge server: path, headers and body)
and the most requests it held at once (`max_in_flight`).
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

Action = Any


def prompt_text(body: dict[str, Any]) -> str:
    """The text of the last message (its text parts, for multimodal content)."""
    content = (body.get("messages") or [{}])[-1].get("content", "")
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if part.get("type") == "text")


def image_count(body: dict[str, Any]) -> int:
    content = body["messages"][-1]["content"]
    return 0 if isinstance(content, str) else sum(p["type"] == "image_url" for p in content)


def answer_between(prompt: str, start: str, end: str) -> str:
    """The text between two markers of the prompt (e.g. the student's answer)."""
    i = prompt.find(start)
    j = prompt.find(end, i + len(start))
    return prompt[i + len(start) : j].strip() if i >= 0 and j >= 0 else ""


def student_answer(prompt: str) -> str:
    """The answer a judge prompt asks about (mmr's judge template)."""
    return answer_between(prompt, "Student's final answer:", "Decide whether")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers do
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms stalls

    def log_message(self, *args: Any) -> None:  # quiet test output
        pass

    def do_POST(self) -> None:
        server: FakeOpenAIServer = self.server  # type: ignore[assignment]
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        with server.lock:
            server.record(self.path, dict(self.headers), body)
            # Requests left over from an earlier test (still sleeping) are not counted.
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
            self._act(action)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (its timeout): expected in the failure tests
        finally:
            with server.lock:
                if generation == server.generation:
                    server.in_flight -= 1

    def _act(self, action: Action) -> None:
        kind = action[0] if isinstance(action, tuple) else "text"
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
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            reply = {"id": "chatcmpl-test", "object": "chat.completion", "choices": [choice]}
            self._send(200, json.dumps(reply).encode())

    def _send(self, status: int, payload: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class FakeOpenAIServer(ThreadingHTTPServer):
    """`script(body) -> action`; `requests` holds the request bodies."""

    daemon_threads = True
    request_queue_size = 256
    default_reply = "ok"
    default_after_sleep = "late"

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self.generation = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._defaults()

    def _defaults(self) -> None:
        reply = self.default_reply
        self.script: Callable[[Any], Action] = lambda request: reply
        self.after_sleep: Action = self.default_after_sleep
        self.latency_s = 0.0

    def action_for(self, body: dict[str, Any]) -> Action:
        return self.script(body)

    def record(self, path: str, headers: dict[str, str], body: dict[str, Any]) -> None:
        self.requests.append(body)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def start(self) -> FakeOpenAIServer:
        self._thread.start()
        return self

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.generation += 1
            self.in_flight = 0
            self.max_in_flight = 0
        self._defaults()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class FakeJudgeServer(FakeOpenAIServer):
    """`script(prompt) -> action`, answering CORRECT by default; `requests` holds
    `{"path", "headers", "body"}` so tests can check what the judge client sent."""

    default_reply = "CORRECT"
    default_after_sleep = "CORRECT"

    def action_for(self, body: dict[str, Any]) -> Action:
        return self.script(prompt_text(body))

    def record(self, path: str, headers: dict[str, str], body: dict[str, Any]) -> None:
        self.requests.append({"path": path, "headers": headers, "body": body})
