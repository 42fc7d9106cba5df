"""Downloads into the one cache directory of the core (checkpoints, and anything else fetched).

``cache_dir()`` is $DEAOT_CACHE (``~`` expanded; empty counts as unset), else ~/.cache/deaot.
``download`` fetches a URL once into it, with a timeout, an optional sha256 check and Google
Drive's "download anyway" page confirmed; a web page instead of the file is refused.
"""
from __future__ import annotations

import hashlib
import html
import http.cookiejar
import logging
import os
import re
import shutil
import socket
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from .errors import CheckpointError

log = logging.getLogger(__name__)

CACHE_ENV = "DEAOT_CACHE"


def cache_dir() -> Path:
    """Where downloads live: $DEAOT_CACHE (``~`` expanded; empty: unset), else ~/.cache/deaot."""
    configured = os.environ.get(CACHE_ENV, "").strip()
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "deaot"


#: seconds to connect, and to wait for each read, before a download gives up (``download``'s
#: ``timeout``, else ``$DEAOT_DOWNLOAD_TIMEOUT``, else this)
DEFAULT_DOWNLOAD_TIMEOUT = 30.0
DOWNLOAD_TIMEOUT_ENV = "DEAOT_DOWNLOAD_TIMEOUT"


def download_timeout(default: float | None = None) -> float:
    """The download timeout in seconds: ``$DEAOT_DOWNLOAD_TIMEOUT`` when set, else ``default``,
    else :data:`DEFAULT_DOWNLOAD_TIMEOUT`. A value that is not a positive number raises
    :class:`CheckpointError` (there is no "wait forever")."""
    text = os.environ.get(DOWNLOAD_TIMEOUT_ENV, "").strip()
    if not text:
        return float(DEFAULT_DOWNLOAD_TIMEOUT if default is None else default)
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise CheckpointError(f"${DOWNLOAD_TIMEOUT_ENV}={text!r} is not a positive number of seconds")
    return value


def _url_file_name(url: str) -> str:
    name = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
    return name if name not in ("", ".", "..") else "checkpoint.pth"


def url_cache_path(url: str, sha256: str | None = None, directory: str | Path | None = None) -> Path:
    """Where :func:`download` keeps ``url`` when no file name is given:
    ``<cache>/urls/<16 hex digits of sha256(url, sha256)>/<the URL's file name>``, so two URLs
    with the same file name (``file:///a/model.pth``, ``file:///b/model.pth``) never share a file,
    and the name stays readable."""
    directory = Path(directory) if directory is not None else cache_dir()
    key = hashlib.sha256(f"{url}\n{(sha256 or '').lower()}".encode()).hexdigest()[:16]
    return directory / "urls" / key / _url_file_name(url)


def _is_timeout(err: BaseException) -> bool:
    if isinstance(err, urllib.error.URLError) and isinstance(err.reason, BaseException):
        err = err.reason
    return isinstance(err, (TimeoutError, socket.timeout))


def sha256_of(path: Path) -> str:
    """The hex sha256 digest of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


_SNIFF_BYTES = 4096  # read before deciding whether a response is a web page
_MAX_PAGE_BYTES = 1 << 20  # a web page larger than this is not parsed for a confirm link


def _looks_like_html(head: bytes) -> bool:
    """Whether the first bytes of a download are a web page (a checkpoint is a zip or a pickle)."""
    text = head.lstrip()[:512].lower()
    return text.startswith(b"<") and (b"<html" in text or b"<!doctype html" in text or b"<head" in text)


def _attributes(tag: str) -> dict[str, str]:
    return {k.lower(): html.unescape(v) for k, v in re.findall(r'([\w:-]+)\s*=\s*"([^"]*)"', tag)}


def drive_confirm_url(page: str, page_url: str, cookies: http.cookiejar.CookieJar | None = None) -> str | None:
    """The URL behind the "download anyway" of a Google Drive warning page (files too large for its
    virus scan), or None when ``page`` has none (e.g. a quota or permission page).

    Understands the current page (a form with hidden ``id``/``confirm``/... inputs), the older one
    (a link with a ``confirm=`` token) and the oldest (a ``download_warning`` cookie)."""
    for form in re.finditer(r"<form\b([^>]*)>(.*?)</form>", page, re.S | re.I):
        action = _attributes(form.group(1)).get("action")
        fields = {}
        for tag in re.finditer(r"<input\b([^>]*)>", form.group(2), re.I):
            attrs = _attributes(tag.group(1))
            if attrs.get("type", "").lower() == "hidden" and attrs.get("name"):
                fields[attrs["name"]] = attrs.get("value", "")
        if action and "id" in fields:
            return urllib.parse.urljoin(page_url, action) + "?" + urllib.parse.urlencode(fields)
    link = re.search(r'href="([^"]*[?&](?:amp;)?confirm=[^"]+)"', page)
    if link:
        return urllib.parse.urljoin(page_url, html.unescape(link.group(1)))
    for cookie in cookies or []:
        if cookie.name.startswith("download_warning"):
            parts = urllib.parse.urlparse(page_url)
            query = dict(urllib.parse.parse_qsl(parts.query), confirm=cookie.value)
            return urllib.parse.urlunparse(parts._replace(query=urllib.parse.urlencode(query)))
    return None


def _page_title(page: str) -> str:
    match = re.search(r"<title[^>]*>(.*?)</title>", page, re.S | re.I)
    return " ".join(html.unescape(match.group(1)).split())[:120] if match else ""


def _fetch(url: str, out, timeout: float | None) -> None:
    """Stream ``url`` into the open file ``out``, following one Google Drive confirm step; a web
    page instead of a file raises :class:`CheckpointError`."""
    cookies = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(cookies))
    current = url
    for attempt in range(2):
        with opener.open(current, timeout=timeout) as response:
            head = response.read(_SNIFF_BYTES)
            content_type = response.headers.get_content_type() if response.headers else ""
            if not (_looks_like_html(head) or (content_type == "text/html" and head.lstrip()[:1] == b"<")):
                out.write(head)
                shutil.copyfileobj(response, out, 1 << 20)
                return
            page = (head + response.read(_MAX_PAGE_BYTES)).decode("utf-8", "replace")
            page_url = response.geturl() or current
        confirm = drive_confirm_url(page, page_url, cookies) if attempt == 0 else None
        if confirm is None:
            title = _page_title(page)
            raise CheckpointError(
                f"{url} returned a web page{f' ({title!r})' if title else ''}, not a checkpoint: the link needs a "
                f"browser (sign-in, a quota or a confirmation page?). Download the file by hand and pass its path "
                f"as the checkpoint, or put it in the cache directory {cache_dir()}")
        log.info("%s: confirming a large-file download page, fetching %s", url, confirm)
        current = confirm
    raise AssertionError("unreachable")  # pragma: no cover


def download(url: str, sha256: str | None = None, directory: str | Path | None = None,
             filename: str | None = None, timeout: float | None = None) -> Path:
    """Fetch ``url`` once into the cache, verifying ``sha256`` when given, and return the file.

    Where: ``directory / filename`` when ``filename`` is given (the caller names the file, e.g.
    the official ``<model>_PRE_YTB_DAV.pth`` of the plugin); otherwise :func:`url_cache_path`,
    a sub-directory keyed by the URL and the checksum, under ``directory`` (default
    :func:`cache_dir`).

    ``timeout`` (seconds, default :func:`download_timeout`: ``$DEAOT_DOWNLOAD_TIMEOUT`` else
    30 s) bounds connecting and each read; a server that does not answer in time raises
    :class:`CheckpointError` naming the URL. A web page instead of a file (Google Drive's warning
    page for large files is confirmed once, anything else is refused with
    :class:`CheckpointError`) and an interrupted or failed download leave nothing in the cache."""
    directory = Path(directory) if directory is not None else cache_dir()
    target = directory / filename if filename is not None else url_cache_path(url, sha256, directory)
    if timeout is None:
        timeout = download_timeout()
    elif not float(timeout) > 0:
        raise CheckpointError(f"download timeout must be a positive number of seconds, got {timeout!r}")
    timeout = float(timeout)
    if target.exists() and (sha256 is None or sha256_of(target) == sha256):
        log.info("using cached checkpoint %s (from %s)", target, url)
        return target
    directory.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s -> %s (timeout %gs)", url, target, timeout)
    # the partial file sits in the cache root (same file system as the target, so the final
    # rename is atomic); the per-URL directory is only made for a complete, verified file
    with tempfile.NamedTemporaryFile(dir=directory, delete=False, suffix=".part") as tmp:
        try:
            _fetch(url, tmp, timeout)
        except BaseException as err:
            os.unlink(tmp.name)
            if _is_timeout(err):
                raise CheckpointError(
                    f"downloading {url} timed out: no answer from the server within {timeout:g} s (the connect "
                    f"and per-read timeout; set ${DOWNLOAD_TIMEOUT_ENV}=<seconds> to wait longer, or download "
                    f"the file by hand and pass its path)") from err
            raise
    if sha256 is not None:
        actual = sha256_of(Path(tmp.name))
        if actual != sha256:
            os.unlink(tmp.name)
            raise CheckpointError(f"checksum mismatch for {url}: expected sha256 {sha256}, got {actual}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp.name, target)
    except BaseException:
        if os.path.exists(tmp.name):
            os.unlink(tmp.name)
        raise
    return target
