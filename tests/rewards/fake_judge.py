"""A real HTTP server on 127.0.0.1 that speaks `/v1/chat/completions` like a judge.

Its behaviour is scripted per request by `server.script`, a function of the prompt that
returns an action:

    "CORRECT" / any text   -> 200 with that text as the assistant message
    ("status", 500)        -> that HTTP status
    ("garbage", b"...")    -> 200 with a body that is not a chat completion
    ("drop", None)         -> the connection is closed without a reply
    ("sleep", seconds)     -> wait, then answer as `server.after_sleep` says

`server.latency_s` delays every reply. The server records the requests it saw (path,
headers, body) so tests can check what the client sent. Used by tests and the benchmark.
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


def answer_between(prompt: str, start: str, end: str) -> str:
    """The text between two markers of the prompt (e.g. the student's answer)."""
    i = prompt.find(start)
    j = prompt.find(end, i + len(start))
    return prompt[i + len(start) : j].strip() if i >= 0 and j >= 0 else ""


def student_answer(prompt: str) -> str:
    return answer_between(prompt, "Student's final answer:", "Decide whether")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers do
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms stalls

    def log_message(self, *args: Any) -> None:  # quiet test output
        pass

    def do_POST(self) -> None:
        server: FakeJudgeServer = self.server  # type: ignore[assignment]
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length) or b"{}")
        prompt = body.get("messages", [{}])[-1].get("content", "")
        with server.lock:
            server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
            # Requests left over from an earlier test (still sleeping) are not counted.
            generation = server.generation
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
        try:
            if server.latency_s:
                time.sleep(server.latency_s)
            action = server.script(prompt)
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
        if isinstance(action, tuple) and action[0] == "status":
            self._send(action[1], b'{"error": "scripted failure"}')
        elif isinstance(action, tuple) and action[0] == "garbage":
            self._send(200, action[1])
        elif isinstance(action, tuple) and action[0] == "drop":
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
        else:
            reply = {
                "id": "chatcmpl-test",
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": str(action)},
                        "finish_reason": "stop",
                    }
                ],
            }
            self._send(200, json.dumps(reply).encode())

    def _send(self, status: int, payload: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class FakeJudgeServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.script: Callable[[str], Action] = lambda prompt: "CORRECT"
        self.after_sleep: Action = "CORRECT"
        self.latency_s = 0.0
        self.requests: list[dict[str, Any]] = []
        self.generation = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def start(self) -> FakeJudgeServer:
        self._thread.start()
        return self

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.generation += 1
            self.in_flight = 0
            self.max_in_flight = 0
        self.script = lambda prompt: "CORRECT"
        self.after_sleep = "CORRECT"
        self.latency_s = 0.0

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
