"""PCam download from Zenodo: the file table with published md5s, streaming gunzip, verification, and the
record of verified files. The HTTP transfer itself (resume, retries, offline errors) is in fetch.py."""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import logging
import os
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, NoReturn

from tqdm import tqdm

from histoscan.data.fetch import CHUNK, HostUnreachable, RemoteMissing, download_file, progress_bar
from histoscan.errors import HistoscanInputError

log = logging.getLogger(__name__)

Split = Literal["train", "valid", "test"]
SPLITS: tuple[Split, ...] = ("train", "valid", "test")
ZENODO_RECORD = "https://zenodo.org/records/2546921"
# `{name}` is the remote file name (e.g. camelyonpatch_level_2_split_train_x.h5.gz); a base without `{name}`
# is taken as a folder URL and the name is appended.
DEFAULT_URL = ZENODO_RECORD + "/files/{name}?download=1"
URL_ENV = "HISTOSCAN_PCAM_URL"
RECORD = ".pcam-verified.json"  # sizes/mtimes of files already verified, so reruns skip re-hashing GBs


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset: its local name, checksums, and whether the server holds it gzipped.

    Attributes:
        name: local file name after decompression, e.g. ``camelyonpatch_level_2_split_train_x.h5``.
        split: the split the file belongs to.
        md5: md5 of the local (decompressed) file; None: not checked.
        gz_md5: accepted md5s of the ``.gz`` download (any one matches); empty: not checked.
        gzipped: the server holds ``<name>.gz``.
        optional: a file the server lacks is skipped with a warning instead of an error.
    """

    name: str
    split: str
    md5: str | None
    gz_md5: tuple[str, ...] = ()
    gzipped: bool = True
    optional: bool = False

    @property
    def remote_name(self) -> str:
        """File name on the server."""
        return self.name + ".gz" if self.gzipped else self.name


def _pcam(split: str, kind: str, md5: str, *gz_md5: str) -> RemoteFile:
    return RemoteFile(f"camelyonpatch_level_2_split_{split}_{kind}.h5", split, md5, tuple(gz_md5))


# Published checksums. For valid/test the PCam README and torchvision swap the .gz md5s of x (and of y), so
# either assignment is accepted; the md5 of the decompressed file then tells the two apart.
_X_GZ = ("d8c2d60d490dbd479f8199bdfa0cf6ec", "d5b63470df7cfa627aeec8b9dc0c066e")
_Y_GZ = ("60a7035772fbdb7f34eb86d4420cf66a", "2b85f58b927af9964a4c15b8f7e8f179")
PCAM_FILES: tuple[RemoteFile, ...] = (
    _pcam("train", "x", "01844da899645b4d6f84946d417ba453", "1571f514728f59376b705fc836ff4b63"),
    _pcam("train", "y", "0781386bf6c2fb62d58ff18891466aca", "35c2d7259d906cfc8143347bb8e05be7"),
    _pcam("valid", "x", "81cf9680f1724c40673f10dc88e909b1", *_X_GZ),
    _pcam("valid", "y", "94d8aacc249253159ce2a2e78a86e658", *_Y_GZ),
    _pcam("test", "x", "2614b2e6717d6356be141d9d6dbfcb7e", *_X_GZ),
    _pcam("test", "y", "11ed647efe9fe457a4eb45df1dba19ba", *_Y_GZ),
    *(
        RemoteFile(f"camelyonpatch_level_2_split_{s}_meta.csv", s, None, gzipped=False, optional=True)
        for s in SPLITS
    ),
)


@dataclass(frozen=True)
class FileResult:
    """What happened to one file: ``present`` (verified earlier), ``verified``, ``downloaded``,
    ``decompressed`` (from a local .gz) or ``unavailable`` (optional file the server lacks)."""

    name: str
    path: Path
    action: str


def download_pcam(
    out: str | Path,
    splits: Iterable[str] = SPLITS,
    *,
    base_url: str | None = None,
    meta: bool = True,
    files: Sequence[RemoteFile] | None = None,
    keep_gz: bool = False,
    recheck: bool = False,
    timeout: float = 10.0,
    retries: int = 3,
    progress: bool = True,
) -> list[FileResult]:
    """Fetch, verify and decompress the official PCam files into ``out``.

    Verified files are skipped; ``<name>.h5.gz`` or ``<name>.h5`` placed in ``out`` by hand are verified (and
    decompressed) instead of downloaded; partial downloads (``<name>.h5.gz.part``) resume.

    Args:
        out: destination folder (created).
        splits: any of "train", "valid", "test".
        base_url: URL template with ``{name}`` or a folder URL; default $HISTOSCAN_PCAM_URL, else Zenodo.
        meta: also fetch the optional ``*_meta.csv`` files (slide ids and coordinates).
        files: the file table (default PCAM_FILES); tests inject their own checksums here.
        keep_gz: keep the ``.h5.gz`` after a verified decompression.
        recheck: re-hash files even when they were verified by an earlier run.
        timeout: seconds to wait for a connection or a stalled read.
        retries: automatic resumes of a transfer that broke off.
        progress: show tqdm progress bars (on a terminal).

    Returns:
        One FileResult per selected file, in table order.

    Raises:
        HistoscanInputError: unknown split, unreachable host, checksum mismatch, interrupted transfer.
    """
    out = Path(out)
    wanted = list(dict.fromkeys(splits))
    bad = [s for s in wanted if s not in SPLITS]
    if bad or not wanted:
        raise HistoscanInputError(
            f"--split: unknown split(s) {' '.join(bad) or '(none)'}; use train valid test"
        )
    template = base_url or os.environ.get(URL_ENV) or DEFAULT_URL
    if "{name}" not in template:
        template = template.rstrip("/") + "/{name}"
    table = [
        f for f in (PCAM_FILES if files is None else files) if f.split in wanted and (meta or not f.optional)
    ]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HistoscanInputError(f"--out {out}: cannot create the folder ({e.strerror})") from e
    ctx = _Ctx(out, _load_record(out), keep_gz, recheck, timeout, retries, progress)
    results: dict[str, FileResult] = {}
    offline = False
    for f in table:  # local files first, so an offline machine still verifies what was placed by hand
        if (r := _local(ctx, f)) is not None:
            results[f.name] = r
    for i, f in enumerate(table):
        if f.name in results:
            continue
        try:
            if offline and f.optional:  # don't wait on the host again for a file we can do without
                raise HostUnreachable("host unreachable")
            results[f.name] = _remote(ctx, f, template.format(name=f.remote_name))
        except HostUnreachable as e:
            offline = True
            if f.optional:
                log.warning("%s: not fetched (%s); it is optional", f.name, e)
                results[f.name] = FileResult(f.name, out / f.name, "unavailable")
                continue
            missing = [g.remote_name for g in table[i:] if g.name not in results and not g.optional]
            again = "" if wanted == list(SPLITS) else " --split " + " ".join(wanted)
            raise HistoscanInputError(
                f"{out}: could not fetch the PCam files ({e}). Download {', '.join(missing)} by hand from "
                f"{ZENODO_RECORD}, put them in {out} as <name>.h5.gz or <name>.h5, then run "
                f"`histoscan download pcam --out {out}{again}` to verify and decompress them"
            ) from None
    return [results[f.name] for f in table]


@dataclass
class _Ctx:
    out: Path
    record: dict[str, dict]
    keep_gz: bool
    recheck: bool
    timeout: float
    retries: int
    progress: bool

    def mark(self, path: Path, md5: str | None) -> None:
        self.record[path.name] = _stamp(path, md5)
        tmp = self.out / (RECORD + ".tmp")
        tmp.write_text(json.dumps(self.record, indent=1, sort_keys=True))
        os.replace(tmp, self.out / RECORD)


def _stamp(path: Path, md5: str | None) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "md5": md5}


def _load_record(out: Path) -> dict[str, dict]:
    try:
        data = json.loads((out / RECORD).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _local(ctx: _Ctx, f: RemoteFile) -> FileResult | None:
    """Verify/decompress what is already in the folder; None when the file must be fetched."""
    path, gz = ctx.out / f.name, ctx.out / f.remote_name
    if path.is_file():
        if not ctx.recheck and ctx.record.get(f.name) == _stamp(path, f.md5):
            return FileResult(f.name, path, "present")
        _verify_plain(ctx, f, path)
        return FileResult(f.name, path, "verified")
    if f.gzipped and gz.is_file():  # a finished download, or placed by hand (partial ones end in .part)
        _gunzip(ctx, f, gz, path)
        return FileResult(f.name, path, "decompressed")
    return None


def _remote(ctx: _Ctx, f: RemoteFile, url: str) -> FileResult:
    target = ctx.out / f.remote_name
    try:
        download_file(url, target, timeout=ctx.timeout, retries=ctx.retries, progress=ctx.progress)
    except RemoteMissing as e:
        if f.optional:
            log.warning("%s: %s; it is optional, skipped", f.remote_name, e)
            return FileResult(f.name, ctx.out / f.name, "unavailable")
        raise HistoscanInputError(f"{url}: {e} (check --base-url / ${URL_ENV})") from None
    path = ctx.out / f.name
    if f.gzipped:
        _gunzip(ctx, f, target, path)
    else:
        _verify_plain(ctx, f, path)
    return FileResult(f.name, path, "downloaded")


def _verify_plain(ctx: _Ctx, f: RemoteFile, path: Path) -> None:
    if f.md5 is not None and (got := _md5_file(ctx, path)) != f.md5:
        _quarantine_error(path, got, (f.md5,))
    ctx.mark(path, f.md5)


class _HashingReader:
    """Read-through wrapper that hashes and counts every byte read (gzip reads its input exactly once)."""

    def __init__(self, fh: BinaryIO, bar: tqdm) -> None:
        self.fh, self.bar, self.md5 = fh, bar, hashlib.md5()

    def read(self, n: int = -1) -> bytes:
        data = self.fh.read(n)
        self.md5.update(data)
        self.bar.update(len(data))
        return data


def _gunzip(ctx: _Ctx, f: RemoteFile, gz: Path, path: Path) -> None:
    """Stream-decompress ``gz`` to ``path`` in one pass, checking md5 of both; bad files are quarantined."""
    tmp = path.with_name(path.name + ".part")
    out_md5, error = hashlib.md5(), None
    with open(gz, "rb") as raw, progress_bar(ctx.progress, gz.stat().st_size, f"gunzip {gz.name}") as bar:
        src = _HashingReader(raw, bar)
        try:
            with gzip.GzipFile(fileobj=src, mode="rb") as zf, open(tmp, "wb") as fh:  # type: ignore[arg-type]
                while chunk := zf.read(CHUNK):
                    fh.write(chunk)
                    out_md5.update(chunk)
        except (OSError, EOFError, zlib.error) as e:
            if isinstance(e, OSError) and e.errno == errno.ENOSPC:
                tmp.unlink(missing_ok=True)
                raise HistoscanInputError(f"{ctx.out}: disk full while decompressing {gz.name}") from None
            error = f"not a valid gzip file ({e})"
            while src.read(CHUNK):  # hash the rest so the message can name the file's md5
                pass
    gz_md5 = src.md5.hexdigest()
    if error or (f.gz_md5 and gz_md5 not in f.gz_md5):
        tmp.unlink(missing_ok=True)
        _quarantine_error(gz, gz_md5, f.gz_md5, error)
    if f.md5 is not None and out_md5.hexdigest() != f.md5:
        _quarantine_error(tmp, out_md5.hexdigest(), (f.md5,), shown=path)
    os.replace(tmp, path)
    ctx.mark(path, f.md5)
    if not ctx.keep_gz:
        gz.unlink()


def _md5_file(ctx: _Ctx, path: Path) -> str:
    md5 = hashlib.md5()
    with open(path, "rb") as fh, progress_bar(ctx.progress, path.stat().st_size, f"md5 {path.name}") as bar:
        while chunk := fh.read(CHUNK):
            md5.update(chunk)
            bar.update(len(chunk))
    return md5.hexdigest()


def _quarantine_error(
    path: Path, got: str, want: Sequence[str | None], problem: str = "", shown: Path | None = None
) -> NoReturn:
    """Rename a bad file to ``<name>.corrupt`` (so nothing corrupt looks valid) and raise the user error."""
    shown = shown or path
    bad = shown.with_name(shown.name + ".corrupt")
    os.replace(path, bad)
    what = problem or f"md5 {got} does not match the published {' or '.join(w for w in want if w)}"
    raise HistoscanInputError(
        f"{shown}: {what}; moved to {bad.name}. Run `histoscan download pcam --out {shown.parent}` again to "
        f"fetch it afresh"
    )
