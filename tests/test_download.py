"""download(): checksum, atomic write, offline message. Served from loopback, never the internet."""

import hashlib
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from nanogpt_lib.data import DownloadError, download, sha256_of

PAYLOAD = b"First Citizen:\nBefore we proceed any further, hear me speak.\n" * 100
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path: Path):
    served = tmp_path / "served"
    served.mkdir()
    (served / "input.txt").write_bytes(PAYLOAD)
    handler = partial(QuietHandler, directory=str(served))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_download_verifies_and_writes(server, tmp_path):
    dest = tmp_path / "data" / "shakespeare" / "input.txt"
    assert download(f"{server}/input.txt", dest, SHA) == dest
    assert dest.read_bytes() == PAYLOAD
    assert sha256_of(dest) == SHA
    assert [p.name for p in dest.parent.iterdir()] == ["input.txt"]


def test_existing_verified_file_is_not_downloaded_again(tmp_path):
    dest = tmp_path / "input.txt"
    dest.write_bytes(PAYLOAD)
    assert download("http://127.0.0.1:9/never-contacted", dest, SHA) == dest


def test_existing_file_with_wrong_checksum_is_reported_and_kept(tmp_path):
    dest = tmp_path / "input.txt"
    dest.write_bytes(b"something else")
    with pytest.raises(DownloadError, match="exists but its sha256"):
        download("http://127.0.0.1:9/x", dest, SHA)
    assert dest.read_bytes() == b"something else"


def test_wrong_checksum_leaves_nothing_behind(server, tmp_path):
    dest = tmp_path / "out" / "input.txt"
    with pytest.raises(DownloadError, match="not the expected"):
        download(f"{server}/input.txt", dest, "0" * 64)
    assert list(dest.parent.iterdir()) == []


def test_missing_file_on_server_is_a_clear_error(server, tmp_path):
    dest = tmp_path / "out" / "input.txt"
    with pytest.raises(DownloadError, match="could not download .*404"):
        download(f"{server}/nope.txt", dest, SHA)
    assert list(dest.parent.iterdir()) == []


def test_no_network_says_where_to_put_the_file(tmp_path):
    import socket

    with socket.socket() as s:  # a port that nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dest = tmp_path / "input.txt"
    with pytest.raises(DownloadError) as info:
        download(f"http://127.0.0.1:{port}/input.txt", dest, SHA, timeout=5)
    message = str(info.value)
    assert str(dest.resolve()) in message and SHA in message and "put it at" in message
    assert not dest.exists()


def test_failed_download_keeps_a_previous_good_file_untouched(server, tmp_path):
    dest = tmp_path / "input.txt"
    download(f"{server}/input.txt", dest, SHA)
    before = dest.stat().st_mtime_ns
    download(f"{server}/input.txt", dest, SHA)
    assert dest.stat().st_mtime_ns == before


class TruncatingHandler(QuietHandler):
    """Promises the whole payload, sends half of it, and hangs up."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2])
        self.wfile.flush()
        self.close_connection = True


def test_a_download_cut_half_way_is_an_error_and_keeps_the_previous_file(tmp_path):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), TruncatingHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/input.txt"
        dest = tmp_path / "new" / "input.txt"
        with pytest.raises(DownloadError, match="could not download .*connection closed after 3,050 of 6,100 bytes"):
            download(url, dest, SHA, timeout=10)
        assert list(dest.parent.iterdir()) == [], "no half-written file, no .part left behind"
        kept = tmp_path / "old" / "input.txt"
        kept.parent.mkdir()
        kept.write_bytes(PAYLOAD)
        before = kept.stat().st_mtime_ns
        assert download(url, kept, SHA) == kept, "a verified file is used without contacting the server"
        assert kept.stat().st_mtime_ns == before and kept.read_bytes() == PAYLOAD
    finally:
        httpd.shutdown()
