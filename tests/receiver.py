"""A notification receiver for tests: records every HTTP request (an ntfy topic, a webhook, an
Uptime Kuma push URL) as one JSON line, answers 200. Loopback only.

    python receiver.py OUT.jsonl [ADDRESS]   prints its port on the first line of stdout
"""

from __future__ import annotations

import http.server
import json
import sys
import threading


class Recorder(http.server.BaseHTTPRequestHandler):
    out = ""
    lock = threading.Lock()

    def _record(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace")
        line = json.dumps(
            {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body}
        )
        with self.lock, open(self.out, "a", encoding="utf-8") as f:
            f.write(line + "\n")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"ok": true}')

    do_GET = do_POST = do_PUT = _record

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    Recorder.out = sys.argv[1]
    address = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"
    server = http.server.ThreadingHTTPServer((address, 0), Recorder)
    print(server.server_address[1], flush=True)
    # Bounded: it stops by itself even if the test that started it dies.
    threading.Timer(600, server.shutdown).start()
    server.serve_forever()


if __name__ == "__main__":
    main()
