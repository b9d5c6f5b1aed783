"""Bounded reading for the CLI: downloads with a total deadline, decompression with a cap.

Standard library only. ``fetch`` follows redirects itself, and only within the origin it
started from: the bearer token is never sent to another scheme, host or port, and a
redirect elsewhere is an error naming both URLs. The whole download (connecting, every
redirect, every byte) must finish by the deadline, however slowly a server trickles.
"""

from __future__ import annotations

import http.client
import ssl
import threading
import time
import zlib
from pathlib import Path
from urllib.parse import urljoin, urlsplit

GZIP_MAGIC = b"\x1f\x8b"
DEFAULT_MAX_SIZE = 1 << 30
_REDIRECTS = (301, 302, 303, 307, 308)
_MAX_REDIRECTS = 5
_CHUNK = 1 << 16


class FetchError(Exception):
    """A failure to report as one line (it names the URL or file concerned)."""


def decompress(data: bytes, max_size: int, where: str) -> bytes:
    """``data`` gunzipped (as many layers as it has), never more than ``max_size`` bytes."""
    while data[:2] == GZIP_MAGIC:
        decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out = decompressor.decompress(data, max_size + 1)
        except zlib.error as exc:
            raise FetchError(f"{where}: corrupt gzip data ({exc})") from None
        if len(out) > max_size:
            raise FetchError(
                f"{where}: decompresses to more than {max_size} bytes (--max-size); refusing"
                " it (a gzip bomb, or raise --max-size)"
            )
        if not decompressor.eof:
            raise FetchError(f"{where}: truncated gzip data")
        data = out
    return data


def read_file(path: str, max_size: int) -> bytes:
    """A snapshot file's bytes, decompressed, within ``max_size``."""
    return decompress(read_bytes(path, max_size), max_size, path)


def read_bytes(path: str, max_size: int) -> bytes:
    """A file's bytes as they are, refused beyond ``max_size``."""
    try:
        with open(path, "rb") as handle:
            size = Path(path).stat().st_size
            if size > max_size:
                raise FetchError(f"{path}: {size} bytes, more than --max-size ({max_size})")
            # Sized by the file, not by the limit: read(n) reserves n bytes up front.
            data = handle.read(min(size, max_size) + 1)
    except FileNotFoundError:
        raise FetchError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise FetchError(f"{path}: is a directory") from None
    except OSError as exc:
        raise FetchError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > max_size:
        raise FetchError(f"{path}: more than --max-size ({max_size}) bytes")
    return data


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, (parts.hostname or "").lower(), port


def fetch(
    url: str, token: str | None, timeout: float, max_size: int, *, decode: bool = True
) -> tuple[str, bytes]:
    """GET ``url`` within ``timeout`` seconds in all: (the URL answered, the body).

    The body is gunzipped (bounded by ``max_size``) unless ``decode`` is false: then it is
    the bytes as sent (a stored snapshot that is itself gzip'd stays so).

    Runs the transfer in a daemon thread so that no server, however slow, holds the caller
    past the deadline.
    """
    deadline = time.monotonic() + timeout
    result: list[tuple[str, bytes]] = []
    failure: list[BaseException] = []
    current = [url]

    def run() -> None:
        try:
            result.append(_transfer(url, token, deadline, max_size, current, decode))
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run, name="flightdeck-pull", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise FetchError(
            f"timed out after {timeout:g} s (--timeout, for the whole download): {current[0]}"
        )
    if failure:
        exc = failure[0]
        if isinstance(exc, FetchError):
            raise exc
        raise FetchError(f"{current[0]}: {exc}") from None
    return result[0]


def _transfer(
    url: str, token: str | None, deadline: float, max_size: int, current: list[str], decode: bool
) -> tuple[str, bytes]:
    origin = _origin(url)
    for _ in range(_MAX_REDIRECTS + 1):
        current[0] = url
        headers = {"Accept-Encoding": "gzip", "Accept": "application/json"}
        headers["User-Agent"] = "flightdeck-cli"
        if token is not None and _origin(url) == origin:
            headers["Authorization"] = f"Bearer {token}"
        status, location, encoding, body = _get(url, headers, deadline, max_size)
        if status in _REDIRECTS and location:
            target = urljoin(url, location)
            if _origin(target) != origin:
                raise FetchError(
                    f"{url} redirected to {target}, another origin: not followed, so the token"
                    " is not sent there (pull from that URL directly if you trust it)"
                )
            url = target
            continue
        if status != 200:
            raise HTTPStatusError(status, url)
        if encoding == "gzip" or (decode and body[:2] == GZIP_MAGIC):
            body = decompress(body, max_size, url)
        return url, body
    raise FetchError(f"{url}: more than {_MAX_REDIRECTS} redirects")


class HTTPStatusError(FetchError):
    """An answer other than 200 (the message is filled in by the caller)."""

    def __init__(self, status: int, url: str) -> None:
        super().__init__(f"HTTP {status} from {url}")
        self.status = status
        self.url = url


def _get(
    url: str, headers: dict[str, str], deadline: float, max_size: int
) -> tuple[int, str | None, str, bytes]:
    parts = urlsplit(url)
    remaining = max(deadline - time.monotonic(), 0.001)
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        context = ssl.create_default_context()
        conn = http.client.HTTPSConnection(
            parts.hostname or "", parts.port, timeout=remaining, context=context
        )
    else:
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=remaining)
    try:
        conn.request(
            "GET", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), headers=headers
        )
        answer = conn.getresponse()
        chunks: list[bytes] = []
        size = 0
        while True:
            if conn.sock is not None:
                conn.sock.settimeout(max(deadline - time.monotonic(), 0.001))
            chunk = answer.read1(_CHUNK)
            if not chunk:
                break
            size += len(chunk)
            if size > max_size:
                raise FetchError(f"{url}: more than {max_size} bytes (--max-size); refusing it")
            chunks.append(chunk)
        encoding = (answer.getheader("Content-Encoding") or "").lower()
        return answer.status, answer.getheader("Location"), encoding, b"".join(chunks)
    except http.client.IncompleteRead:
        raise FetchError(f"{url}: the connection closed before the answer was complete") from None
    except ConnectionRefusedError:
        raise FetchError(
            f"cannot connect to {url}: connection refused (is the service running?)"
        ) from None
    except TimeoutError:
        raise FetchError(f"timed out waiting for {url}") from None
    except ssl.SSLError as exc:
        raise FetchError(f"{url}: TLS error: {exc.reason or exc}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise FetchError(f"cannot fetch {url}: {exc}") from None
    finally:
        conn.close()
