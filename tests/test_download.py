"""The real download code against an HTTP server this test starts on 127.0.0.1 (no internet):
an empty cache, no DROPSAMPLE_DATA_DIR, the URL setting pointed at the server."""

import hashlib
import http.server
import json
import socket
import threading

import pytest

import conftest
from conftest import TINY, cli
from dropsample import data
from dropsample.data import download
from dropsample.errors import DataError



def corpus_bytes() -> bytes:
    """Tiny Shakespeare as the server sends it (read at test time: conftest may fetch it first)."""
    return (conftest.DATA_DIR / "tinyshakespeare" / "input.txt").read_bytes()


class Handler(http.server.BaseHTTPRequestHandler):
    """/input.txt the corpus, /missing 404, /error 500, /truncated half the announced body."""

    def do_GET(self):
        self.server.requests.append(self.path)
        body = self.server.corpus
        if self.path == "/input.txt":
            self._send(200, body, len(body))
        elif self.path == "/error":
            self._send(500, b"boom", 4)
        elif self.path == "/truncated":
            self._send(200, body[: len(body) // 2], len(body))
        else:
            self._send(404, b"not here", 8)

    def _send(self, code, body, length):
        self.send_response(code)
        self.send_header("Content-Length", str(length))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.requests = []
    httpd.corpus = corpus_bytes()
    httpd.timeout = 5
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield httpd, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture()
def online(monkeypatch):
    """No local copy and no offline flags: the download path is the only way to the corpus."""
    for var in ("DROPSAMPLE_DATA_DIR", "HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cache_entries(root):
    """Everything in the download cache, temporary folders included."""
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_download_verifies_caches_and_reuses_without_the_network(server, online, tmp_path):
    httpd, base = server
    root = tmp_path / "downloads"
    sha = hashlib.sha256(httpd.corpus).hexdigest()
    path = download.fetch(f"{base}/input.txt", root, sha256=sha, log=lambda *a: None)
    assert path.read_bytes() == httpd.corpus and path.name == "input.txt"
    assert download.checksum_of(path) == sha
    assert httpd.requests == ["/input.txt"]
    httpd.shutdown()  # the second call must not need the server at all
    again = download.fetch(f"{base}/input.txt", root, sha256=sha, log=lambda *a: None)
    assert again == path and httpd.requests == ["/input.txt"]
    assert len(cache_entries(root)) == 1


def test_prepare_downloads_once_then_reads_the_cache(server, online, tmp_path):
    httpd, base = server
    cfg = conftest.compose([f"data.url={base}/input.txt", f"data.cache_dir={tmp_path}"]).data
    first = data.prepare(cfg, log=lambda *a: None)
    n_val = int(len(httpd.corpus) * 0.1)
    assert first.describe()["splits"]["val"]["bytes"] == n_val
    assert first.describe()["dataset"] == f"{base}/input.txt" and first.describe()["read_from"] == "data.url"
    second = data.prepare(cfg, log=lambda *a: None)
    assert second.cache_key == first.cache_key and httpd.requests == ["/input.txt"]
    assert (second.splits["val"] == first.splits["val"]).all()


@pytest.mark.parametrize("path, sha, message", [
    ("/missing", None, r"the server answered HTTP 404 Not Found"),
    ("/error", None, r"the server answered HTTP 500 Internal Server Error"),
    ("/truncated", None, r"the connection closed after {half:,} of {size:,} bytes \(truncated download\)"),
    ("/input.txt", "0" * 64, r"checksum mismatch: the downloaded file's sha256 is {sha}, expected 0{{64}}"),
])
def test_failed_downloads_are_one_line_and_cache_nothing(server, online, tmp_path, path, sha, message):
    httpd, base = server
    root = tmp_path / "downloads"
    body = httpd.corpus
    message = message.format(half=len(body) // 2, size=len(body), sha=hashlib.sha256(body).hexdigest())
    with pytest.raises(DataError, match=rf"^data.url: {base}{path}: {message}.*data.path=") as err:
        download.fetch(f"{base}{path}", root, sha256=sha, fix="use a local copy: data.path=...", log=lambda *a: None)
    assert "\n" not in str(err.value)
    assert cache_entries(root) == [], "no entry and no temporary file left behind"
    assert download.cached(f"{base}{path}", root, sha) is None
    assert httpd.requests == [path]


def test_refused_connection_and_offline_flags(online, tmp_path, monkeypatch):
    url = f"http://127.0.0.1:{closed_port()}/input.txt"
    with pytest.raises(DataError, match=r"^data.url: .*: connection refused"):
        download.fetch(url, tmp_path, log=lambda *a: None)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    cfg = conftest.compose([f"data.url={url}", f"data.cache_dir={tmp_path}"]).data
    with pytest.raises(DataError, match=r"^data.url: .*no network; use a local copy instead: data.path=/path/to/"
                                        r"input.txt or DROPSAMPLE_DATA_DIR=/folder/holding/tinyshakespeare/input.txt"):
        data.prepare(cfg, log=lambda *a: None)
    assert cache_entries(tmp_path / "downloads") == []


def test_cli_download_failure_is_one_line_and_leaves_no_run(server, online, tmp_path, monkeypatch):
    httpd, base = server
    monkeypatch.setenv("DROPSAMPLE_CACHE_DIR", str(tmp_path / "cache"))  # the command inherits this environment
    result = cli("train", *TINY, f"data.url={base}/missing", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"error: data.url: {base}/missing: the server answered HTTP 404")
    assert "data.path=" in lines[-1] and "Traceback" not in result.stderr + result.stdout
    runs = tmp_path / "runs"
    assert not runs.exists() or not [p for p in runs.rglob("summary.json")], "no run folder claims anything"
    assert not runs.exists() or not any(p.is_dir() for p in (runs / "default").glob("*")), "the folder is removed"
    assert httpd.requests == ["/missing"]


def test_cli_trains_from_a_fresh_download(server, online, tmp_path, monkeypatch):
    """The README's first command on a machine without a local copy: download, then train."""
    httpd, base = server
    monkeypatch.setenv("DROPSAMPLE_CACHE_DIR", str(tmp_path / "cache"))
    result = cli("train", "model=tiny", "train.max_iters=4", "train.eval_interval=4", "train.eval_iters=1",
                 "train.batch_size=4", "sample_after_train=false", f"data.url={base}/input.txt", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    (summary,) = (tmp_path / "runs").rglob("summary.json")
    record = json.loads(summary.read_text())
    assert record["status"] == "completed"
    assert record["data"]["dataset"] == f"{base}/input.txt" and record["data"]["read_from"] == "data.url"
    assert record["data"]["splits"]["train"]["bytes"] + record["data"]["splits"]["val"]["bytes"] == len(httpd.corpus)
    assert httpd.requests == ["/input.txt"]


def test_network_failures_read_as_what_to_do():
    """Failures the loopback server cannot stage (DNS, timeouts) map to words a user can act on."""
    assert download._reason(socket.gaierror(-2, "Name or service not known")) == (
        "cannot resolve the host name (no network? Name or service not known)")
    assert download._reason(TimeoutError()) == f"no answer within {download.TIMEOUT_S} s (no network, or the server is down)"
    assert download._reason(ConnectionRefusedError()).startswith("connection refused")
