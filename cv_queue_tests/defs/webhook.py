"""A webhook receiver for the alert tests: an HTTP server on loopback, in a thread, recording each JSON POST."""

import contextlib
import json
import queue
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class WebhookReceiver:
    def __init__(self, server: ThreadingHTTPServer, posts: "queue.Queue[dict]") -> None:
        self.server, self._posts = server, posts

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/alerts"

    def next(self, timeout_s: float, what: str = "an alert") -> dict:
        """The next POSTed payload; fails the test if none arrives in time."""
        try:
            return self._posts.get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError(f"no webhook POST within {timeout_s:.0f}s waiting for {what}") from None

    def received(self) -> list[dict]:
        """Everything POSTed so far and not yet taken."""
        out = []
        with contextlib.suppress(queue.Empty):
            while True:
                out.append(self._posts.get_nowait())
        return out


@contextlib.contextmanager
def webhook_receiver(delay_s: float = 0.0, status: int = 200) -> Iterator[WebhookReceiver]:
    """`delay_s` holds each answer back (a slow endpoint); `status` is what it answers."""
    posts: queue.Queue[dict] = queue.Queue()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            posts.put({"path": self.path, "content_type": self.headers.get("Content-Type"),
                       "json": json.loads(body)})
            time.sleep(delay_s)
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args: object) -> None:  # keep test output quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="test-webhook", daemon=True)
    thread.start()
    try:
        yield WebhookReceiver(server, posts)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
