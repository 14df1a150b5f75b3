"""A local OpenAI-compatible teacher that answers synthetic tasks with the rule teacher.

    python -m mmr.data.teacher_server --tasks runs/demo/tasks_train.parquet --port 8000
    mmr data run --config recipes/data/demo.yaml --step all --input runs/demo/tasks_train.parquet \
        --output runs/demo/data distill.cot.client.api_base=http://127.0.0.1:8000/v1

The demo's distill stage runs its real client code (HTTP, concurrency, retries, parsing)
against this server instead of a 235B model. The server knows the tasks it was started
with (Sample files written by `mmr.data.synthetic`, whose `meta` describes each scene) and
recognises a request by its image's pixels and its question text; it answers with
`mmr.data.synthetic.teacher_response`, a correct `<think>` trace ending in `\\boxed{}`.
A task it does not know gets HTTP 404 (the client counts it as failed), never a guess.

Endpoints: POST /v1/chat/completions, GET /v1/models. Standard library only; one thread
per request (ThreadingHTTPServer), so the client's concurrency is real.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import threading
import time
from collections.abc import Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from PIL import Image

from mmr.data.io import read_samples
from mmr.data.schema import IMAGE_PLACEHOLDER
from mmr.data.synthetic import teacher_response

__all__ = ["TeacherServer", "pixel_key"]

MODEL_NAME = "rule-teacher"


def pixel_key(data: bytes) -> str:
    """A hash of an image's RGB pixels: the same for any lossless re-encoding of it."""
    with Image.open(io.BytesIO(data)) as image:
        rgb = image.convert("RGB")
        return hashlib.sha1(repr(rgb.size).encode() + rgb.tobytes()).hexdigest()


def _request_parts(body: dict[str, Any]) -> tuple[str, list[bytes]]:
    """The last user message's text and decoded images."""
    content = body["messages"][-1]["content"]
    if isinstance(content, str):
        return content, []
    text, images = "", []
    for part in content:
        if part.get("type") == "text":
            text += part.get("text", "")
        elif part.get("type") == "image_url":
            url = part["image_url"]["url"]
            images.append(base64.b64decode(url.split(",", 1)[1]))
    return text, images


class TeacherServer(ThreadingHTTPServer):
    """`TeacherServer(task_files).start()`; `base_url` for clients; `stop()` at the end."""

    daemon_threads = True
    request_queue_size = 256

    def __init__(self, task_files: Iterable[str | Path], host: str = "127.0.0.1", port: int = 0):
        super().__init__((host, port), _Handler)
        self.tasks: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for file in task_files:
            for sample in read_samples(file):
                if sample.images and "kind" in sample.meta:
                    question = sample.question.replace(IMAGE_PLACEHOLDER, "").strip()
                    self.tasks.setdefault(pixel_key(sample.images[0]), []).append(
                        (question, sample.meta)
                    )
        self.lock = threading.Lock()
        self.served = 0
        self.unknown = 0
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> TeacherServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def answer(self, body: dict[str, Any]) -> str | None:
        """The rule teacher's trace for the task in the request, or None if unknown."""
        text, images = _request_parts(body)
        if not images:
            return None
        for question, meta in self.tasks.get(pixel_key(images[0]), []):
            if question in " ".join(text.split()) or question in text:
                return teacher_response(meta)
        return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass  # the client reports; one line per request would drown the demo's output

    def do_GET(self) -> None:
        if self.path.rstrip("/") != "/v1/models":
            return self._send(404, {"error": {"message": f"no route {self.path}"}})
        self._send(200, {"object": "list", "data": [{"id": MODEL_NAME, "object": "model"}]})

    def do_POST(self) -> None:
        server: TeacherServer = self.server  # type: ignore[assignment]
        if self.path.rstrip("/") != "/v1/chat/completions":
            return self._send(404, {"error": {"message": f"no route {self.path}"}})
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            reply = server.answer(body)
        except (ValueError, KeyError, TypeError, IndexError, OSError) as err:
            return self._send(400, {"error": {"message": f"bad request: {err}"}})
        with server.lock:
            server.served += reply is not None
            server.unknown += reply is None
        if reply is None:
            return self._send(404, {"error": {"message": "not a task this teacher was given"}})
        message = {"role": "assistant", "content": reply}
        self._send(200, {
            "id": f"chatcmpl-{server.served}", "object": "chat.completion",
            "created": int(time.time()), "model": body.get("model", MODEL_NAME),
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        })  # fmt: skip

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the rule teacher over the OpenAI API.")
    parser.add_argument("--tasks", nargs="+", required=True, help="synthetic task files")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    server = TeacherServer(args.tasks, args.host, args.port)
    print(f"rule teacher for {sum(map(len, server.tasks.values()))} tasks at {server.base_url}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.server_close()


if __name__ == "__main__":
    main()
