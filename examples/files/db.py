"""The example internal service: a line-based TCP server standing in for a database."""
import socketserver


class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        if self.rfile.readline().strip() == b"ping":
            self.wfile.write(b"db ok\n")


socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer(("0.0.0.0", 5432), Handler).serve_forever()
