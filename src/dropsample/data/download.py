"""One file over HTTP(S) into the download cache, with the standard library only.

    fetch(url, root, sha256=...) -> the cached file

A cache entry is a folder `root/<key>/` holding the file and `sha256` (its checksum, which
the tokenized-data cache uses as the file's identity). The key depends on the URL and the
expected checksum. The file is streamed into a temporary folder next to the cache entry,
hashed as it arrives, checked against the length the server announced and the expected
checksum, and only then renamed into place: an interrupted or failed download leaves no
entry, and an existing entry is used without touching the network.

Every failure is a DataError of one line that names the URL, what went wrong and `fix`
(the caller says how to use a local copy instead).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import socket
import ssl
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from dropsample.errors import DataError

CHUNK = 1 << 20
TIMEOUT_S = 30  # per socket operation (connect, each read), not for the whole file
USER_AGENT = "dropsample (python urllib)"


def entry(url: str, root: Path, sha256: str | None) -> Path:
    key = hashlib.sha256(f"{url}\n{(sha256 or '').lower()}".encode()).hexdigest()[:20]
    return Path(root) / key


def file_name(url: str) -> str:
    return Path(urllib.parse.urlparse(url).path).name or "download"


def cached(url: str, root: Path, sha256: str | None = None) -> Path | None:
    """The cached file of `url`, or None (no network either way)."""
    path = entry(url, root, sha256) / file_name(url)
    return path if path.is_file() else None


def checksum_of(path: Path) -> str:
    """The sha256 recorded when `path` (a cached download) was fetched."""
    return (Path(path).parent / "sha256").read_text().strip()


def fetch(url: str, root: Path, *, sha256: str | None = None, key: str = "data.url", fix: str = "",
          offline: bool = False, log=print) -> Path:
    """The file at `url`, downloaded once into `root` (see the module docstring)."""
    hit = cached(url, root, sha256)
    if hit is not None:
        return hit
    where = f"{key}: {url}"
    tail = f"; {fix}" if fix else ""
    scheme = urllib.parse.urlparse(url).scheme
    if scheme not in ("http", "https"):
        raise DataError(f"{where} is not an http(s) address{tail}")
    if offline:
        raise DataError(f"{where} cannot be downloaded: HF_DATASETS_OFFLINE/HF_HUB_OFFLINE say there is no "
                        f"network{tail}")
    folder = entry(url, root, sha256)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".download-"))
    except OSError as exc:
        raise DataError(f"{where}: cannot write the download cache {folder.parent} ({exc.strerror or exc})") from None
    try:
        log(f"downloading {url}")
        target = tmp / file_name(url)
        digest, size = _stream(url, target, where, tail)
        if sha256 and digest != sha256.lower():
            raise DataError(f"{where}: checksum mismatch: the downloaded file's sha256 is {digest}, expected "
                            f"{sha256.lower()} (the file changed or was damaged on the way); nothing was "
                            f"cached{tail}")
        (tmp / "sha256").write_text(digest + "\n")
        _fsync_dir(tmp)
        try:
            os.replace(tmp, folder)
        except OSError:
            if not (folder / file_name(url)).is_file():  # not "another process got there first"
                raise
        log(f"downloaded {size:,} bytes into {folder}")
        return folder / file_name(url)
    except OSError as exc:
        raise DataError(f"{where}: cannot write the download cache {folder.parent} ({exc.strerror or exc})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _stream(url: str, target: Path, where: str, tail: str) -> tuple[str, int]:
    """Copy the response body into `target`; returns (sha256 hex, bytes). Network problems
    become one-line DataErrors; local write errors stay OSError."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    h = hashlib.sha256()
    size = 0
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            expected = response.headers.get("Content-Length")
            expected = int(expected) if expected and expected.isdigit() else None
            with open(target, "wb") as f:
                while chunk := response.read(CHUNK):
                    h.update(chunk)
                    f.write(chunk)
                    size += len(chunk)
                f.flush()
                os.fsync(f.fileno())
    except urllib.error.HTTPError as exc:
        raise DataError(f"{where}: the server answered HTTP {exc.code} {exc.reason}{tail}") from None
    except urllib.error.URLError as exc:
        raise DataError(f"{where}: {_reason(exc.reason)}{tail}") from None
    except http.client.IncompleteRead as exc:
        got = size + len(exc.partial)
        expected = f" of {got + exc.expected:,}" if exc.expected else ""
        raise DataError(f"{where}: the connection closed after {got:,}{expected} bytes (truncated download); "
                        f"nothing was cached, try again{tail}") from None
    except (http.client.HTTPException, ConnectionError, TimeoutError, socket.timeout, ssl.SSLError) as exc:
        raise DataError(f"{where}: {_reason(exc)}{tail}") from None
    if expected is not None and size != expected:
        raise DataError(f"{where}: the connection closed after {size:,} of {expected:,} bytes (truncated "
                        f"download); nothing was cached, try again{tail}")
    return h.hexdigest(), size


def _reason(reason) -> str:
    """A network failure in words a user can act on."""
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused (is the server running and the port right?)"
    if isinstance(reason, socket.gaierror):
        return f"cannot resolve the host name (no network? {reason.strerror or reason})"
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return f"no answer within {TIMEOUT_S} s (no network, or the server is down)"
    if isinstance(reason, ssl.SSLError):
        return f"TLS failed ({reason.reason or reason})"
    if isinstance(reason, ConnectionError):
        return f"the connection failed ({type(reason).__name__})"
    text = str(getattr(reason, "strerror", None) or reason)
    return f"the download failed ({text})"


def _fsync_dir(path: Path) -> None:
    """Make the files' directory entries durable before the rename publishes them."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
