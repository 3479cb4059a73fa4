"""Resumable HTTP download of one file: HTTP Range resumes, retries, free-space check, offline errors."""

from __future__ import annotations

import errno
import http.client
import logging
import os
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from histoscan import __version__
from histoscan.errors import HistoscanInputError

log = logging.getLogger(__name__)

CHUNK = 1 << 20


class HostUnreachable(HistoscanInputError):
    """The host could not be reached (offline, DNS failure, refused, timeout) before any byte arrived."""


class RemoteMissing(HistoscanInputError):
    """The server answered but has no such file (HTTP 4xx)."""


class _Interrupted(Exception):
    """The transfer broke off after it started; resuming may help."""


_BYTES = {"unit": "B", "unit_scale": True, "unit_divisor": 1024, "leave": False}


def progress_bar(progress: bool, total: int | None, desc: str, initial: int = 0) -> tqdm:
    """A bytes progress bar; shown on a terminal only (tqdm's disable=None)."""
    return tqdm(total=total, initial=initial, desc=desc, disable=None if progress else True, **_BYTES)


def download_file(
    url: str, dest: Path, *, timeout: float = 10.0, retries: int = 3, progress: bool = True
) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming a partial file with an HTTP Range request.

    A server that ignores Range (answers 200) restarts the file from byte 0. A transfer that breaks off is
    resumed up to ``retries`` times; the ``.part`` file is kept for a later run when it still fails.

    Raises:
        HostUnreachable: no connection could be made (offline, DNS failure, refused, timeout).
        RemoteMissing: the server has no such file.
        HistoscanInputError: the transfer kept breaking off, or the disk is full.
    """
    part = dest.with_name(dest.name + ".part")
    failures = 0
    while True:
        try:
            _fetch_once(url, part, timeout, progress)
            break
        except _Interrupted as e:
            failures += 1
            if failures > retries:
                raise HistoscanInputError(
                    f"{url}: transfer broke off {failures} times ({e}); {part} is kept and running the "
                    f"command again resumes it"
                ) from None
            log.warning("%s: transfer broke off (%s); resuming (%d/%d)", dest.name, e, failures, retries)
            time.sleep(min(2.0**failures, 10.0) * 0.25)
    os.replace(part, dest)
    return dest


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    headers = {"User-Agent": f"histoscan/{__version__}", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416:
            return e  # type: ignore[return-value]  # handled by the caller (part already complete?)
        if 400 <= e.code < 500:
            raise RemoteMissing(f"server answered HTTP {e.code} {e.reason}") from None
        raise _Interrupted(f"HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        reason = e.reason.strerror if isinstance(e.reason, OSError) and e.reason.strerror else e.reason
        raise HostUnreachable(f"{urllib.parse.urlsplit(url).netloc}: {reason}") from None
    except (OSError, http.client.HTTPException) as e:  # connected, then no proper answer: worth a retry
        raise _Interrupted(str(e) or type(e).__name__) from None


def _fetch_once(url: str, part: Path, timeout: float, progress: bool) -> None:
    offset = part.stat().st_size if part.is_file() else 0
    resp = _open(url, offset, timeout)
    with resp:
        total = _content_total(resp.headers)
        if resp.status == 416:  # nothing after `offset`: the part is complete when its size is the total
            if total is not None and total == offset:
                return
            part.unlink()
            raise _Interrupted("server refused the resume range; restarting from 0")
        if offset and resp.status != 206:
            log.info("%s: server ignored the Range request; restarting from byte 0", part.name)
            offset = 0
        elif offset and not (resp.headers.get("Content-Range") or "").startswith(f"bytes {offset}-"):
            part.unlink()
            raise _Interrupted(f"unexpected Content-Range {resp.headers.get('Content-Range')!r}")
        length = resp.headers.get("Content-Length")
        expected = offset + int(length) if length and length.isdigit() else total
        if (need := (expected or 0) - offset) > (free := shutil.disk_usage(part.parent).free):
            raise HistoscanInputError(
                f"{part.parent}: not enough free disk space for {part.name[:-5]} "
                f"({need / 2**30:.1f} GiB needed, {free / 2**30:.1f} GiB free)"
            )
        done = offset
        with (
            open(part, "ab" if offset else "wb") as fh,
            progress_bar(progress, expected, part.name[:-5], offset) as bar,
        ):
            try:
                while chunk := resp.read(CHUNK):
                    fh.write(chunk)
                    done += len(chunk)
                    bar.update(len(chunk))
            except (TimeoutError, OSError, http.client.HTTPException) as e:
                if isinstance(e, OSError) and e.errno == errno.ENOSPC:
                    raise HistoscanInputError(f"{part.parent}: disk full while writing {part.name}") from None
                raise _Interrupted(str(e) or type(e).__name__) from None
    if expected is not None and done != expected:  # http.client returns b"" on an early close, not an error
        raise _Interrupted(f"got {done} of {expected} bytes")


def _content_total(headers: http.client.HTTPMessage) -> int | None:
    m = re.match(r"bytes (?:\d+-\d+|\*)/(\d+)", headers.get("Content-Range") or "")
    return int(m.group(1)) if m else None
