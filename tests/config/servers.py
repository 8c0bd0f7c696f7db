"""Real servers for the operations tests: the site in a subprocess on the test database
(uvicorn, or gunicorn with uvicorn workers as the Procfile runs it), and a TCP relay to
PostgreSQL that a test can close and reopen."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from django.db import connection

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def database_url(*, port: int | None = None) -> str:
    db = connection.settings_dict
    return f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{port or db['PORT']}/{db['NAME']}"


def start_site(*, workers: int = 0, env: dict | None = None, stdout=subprocess.DEVNULL,
               stderr=subprocess.DEVNULL) -> tuple[subprocess.Popen, str]:
    """The site on a free port: uvicorn (workers=0) or gunicorn -c config/gunicorn.py with
    that many uvicorn workers. Returns the process and its base URL once it answers."""
    port = free_port()
    full_env = {**os.environ, "DATABASE_URL": database_url(), "LOG_LEVEL": "WARNING",
                **(env or {})}
    if workers:
        command = [str(Path(sys.executable).parent / "gunicorn"), "-c", "config/gunicorn.py",
                   "config.asgi:application", "--bind", f"127.0.0.1:{port}",
                   "--worker-class", "uvicorn_worker.UvicornWorker", "--workers", str(workers)]
    else:
        command = [sys.executable, "-m", "uvicorn", "config.asgi:application", "--host",
                   "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    process = subprocess.Popen(command, cwd=ROOT, env=full_env, stdout=stdout, stderr=stderr,
                               start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        with contextlib.suppress(httpx.TransportError):
            httpx.get(f"{url}/healthz", timeout=1)
            return process, url
        time.sleep(0.1)
    stop(process)
    raise RuntimeError("the server did not answer")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


class Relay:
    """A TCP relay to PostgreSQL on a port of its own: `close()` makes the port refuse
    connections (and cuts the open ones), `open()` brings it back on the same port."""

    def __init__(self, target_port: int, host: str = "127.0.0.1"):
        self.target = (host, target_port)
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def open(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
