"""A stand-in alert receiver for the compose stack: prints each Alertmanager notification.

Replace it with your pager or chat bridge; the routes in alertmanager.yml stay the same.
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        for alert in body.get("alerts", []):
            labels = alert.get("labels", {})
            print(f"{self.path} {alert.get('status')} {labels.get('alertname')} "
                  f"{json.dumps(labels, sort_keys=True)}", flush=True)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


if __name__ == "__main__":
    HTTPServer(("0.0.0.0", int(sys.argv[1]) if len(sys.argv) > 1 else 5001), Handler
               ).serve_forever()
