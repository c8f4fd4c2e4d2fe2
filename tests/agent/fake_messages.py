"""A fake Anthropic Messages API (test fake: no model can run here) over real HTTP.

``FakeMessagesAPI`` serves ``POST /v1/messages`` on 127.0.0.1 from a script:
a list of functions, each taking the request JSON and returning the
response message (content blocks, stop reason, usage).  It records every
request so tests can check what the SDK sent (tools, cache_control,
tool_result blocks with is_error) and how many model calls were made.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Step = Callable[[dict[str, Any]], dict[str, Any]]


def message(content: list[dict[str, Any]], stop: str, usage: dict[str, int]) -> dict[str, Any]:
    """A Messages API response body."""
    return {"id": "msg_fake", "type": "message", "role": "assistant", "model": "fake",
            "content": content, "stop_reason": stop, "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, **usage}}


def tool_use(name: str, args: dict[str, Any], usage: dict[str, int],
             ident: str = "") -> dict[str, Any]:
    """A response that calls one tool."""
    return message([{"type": "text", "text": f"calling {name}"},
                    {"type": "tool_use", "id": ident or f"toolu_{name}", "name": name,
                     "input": args}], "tool_use", usage)


def last_tool_results(request: dict[str, Any]) -> list[dict[str, Any]]:
    """The tool_result blocks of the request's last (user) message."""
    content = request["messages"][-1]["content"]
    if isinstance(content, str):
        return []
    return [b for b in content if b.get("type") == "tool_result"]


class FakeMessagesAPI:
    """The scripted server; use as a context manager; ``url`` is the base URL."""

    def __init__(self, script: list[Step]) -> None:
        self.script = list(script)
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append(body)
                fake.headers.append({k.lower(): v for k, v in self.headers.items()})
                if not self.path.startswith("/v1/messages") or not fake.script:
                    reply = message([{"type": "text", "text": "GIVE UP"}], "end_turn",
                                    {"input_tokens": 10, "output_tokens": 2})
                else:
                    reply = fake.script.pop(0)(body)
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeMessagesAPI:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
