"""Streaming download on loopback: resume after a dropped connection, checksum, atomic rename."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lwpar.core.errors import LwparError
from lwpar.data.download import fetch

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class Handler(BaseHTTPRequestHandler):
    drop_after = None  # bytes sent before the connection is cut (first request only)
    requests = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        start = 0
        header = self.headers.get("Range")
        if header:
            start = int(header.split("=")[1].split("-")[0])
        Handler.requests.append(start)
        body = PAYLOAD[start:]
        self.send_response(206 if header else 200)
        if header:
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if Handler.drop_after is not None:
            self.wfile.write(body[: Handler.drop_after])
            Handler.drop_after = None
            self.wfile.flush()
            self.connection.shutdown(2)  # the connection drops mid-file
            return
        self.wfile.write(body)


@pytest.fixture()
def server():
    Handler.requests = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/PETA.zip"
    httpd.shutdown()


@pytest.mark.fault
def test_download_resumes_after_dropped_connection(server, tmp_path):
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    Handler.drop_after = 300_000
    with pytest.raises(LwparError, match=r"(connection lost after|incomplete download).*run again to resume"):
        fetch("PETA.zip", server, digest, None, tmp_path)
    assert not (tmp_path / "PETA.zip").exists(), "a partial download must never look finished"
    partial = (tmp_path / "PETA.zip.part").stat().st_size
    assert 0 < partial < len(PAYLOAD)
    path, sha = fetch("PETA.zip", server, digest, None, tmp_path)
    assert Handler.requests[-1] == partial, "the second request must resume where the first stopped"
    assert path.read_bytes() == PAYLOAD and sha == digest


@pytest.mark.fault
def test_wrong_checksum_after_download(server, tmp_path):
    with pytest.raises(LwparError, match=rf"PETA.zip: sha256 mismatch: expected {'a' * 64}, got "
                                         rf"{hashlib.sha256(PAYLOAD).hexdigest()}"):
        fetch("PETA.zip", server, "a" * 64, None, tmp_path)
    assert not (tmp_path / "PETA.zip").exists()


def test_mirror_is_read_in_place(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "PETA.zip").write_bytes(PAYLOAD)
    path, sha = fetch("PETA.zip", None, hashlib.sha256(PAYLOAD).hexdigest(), mirror, tmp_path / "dl")
    assert path == mirror / "PETA.zip" and not (tmp_path / "dl").exists()
