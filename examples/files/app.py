"""The example app: answers with its name and greeting, and asks the internal database by name."""
import os
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAME = os.environ.get("ONEBOX_NAME", socket.gethostname())
PORT = int(os.environ.get("PORT", "8000"))


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.endswith("/db"):
            # Services find each other by name (the bridge's DNS).
            with socket.create_connection((os.environ.get("DB_HOST", "db"), 5432), timeout=3) as conn:
                conn.sendall(b"ping\n")
                body = conn.recv(100).decode()
        else:
            greeting = os.environ.get("GREETING", "hello")
            body = "%s %s path=%s uid=%d\n" % (NAME, greeting, self.path, os.getuid())
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("0.0.0.0", PORT), Handler).serve_forever()
