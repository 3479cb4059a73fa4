"""PCam download against a local HTTP server: resume, Range-less servers, checksums, offline, manual files."""

from __future__ import annotations

import gzip
import hashlib
import io
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import h5py
import numpy as np
import pytest

from histoscan.cli import main
from histoscan.data.download import PCAM_FILES, RemoteFile, download_pcam
from histoscan.errors import HistoscanInputError

PREFIX = "camelyonpatch_level_2_split"


def _h5_bytes(name: str, data: np.ndarray) -> bytes:
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f.create_dataset(name, data=data)
    return buf.getvalue()


def _md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


@pytest.fixture(scope="module")
def pcam_files() -> dict[str, bytes]:
    """Small PCam-layout files: name -> raw (decompressed) bytes, for train and valid."""
    rng = np.random.default_rng(0)
    out = {}
    for split, n in (("train", 6), ("valid", 4)):
        out[f"{PREFIX}_{split}_x.h5"] = _h5_bytes("x", rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8))
        out[f"{PREFIX}_{split}_y.h5"] = _h5_bytes(
            "y", (np.arange(n) % 2).astype(np.uint8).reshape(n, 1, 1, 1)
        )
        out[f"{PREFIX}_{split}_meta.csv"] = (
            ",coord_y,coord_x,tumor_patch,center_tumor_patch,wsi\n"
            + "".join(f"{i},0,0,False,False,slide_{i % 2}\n" for i in range(n))
        ).encode()
    return out


def _table(raw: dict[str, bytes], gz: dict[str, bytes]) -> list[RemoteFile]:
    table = []
    for name, data in raw.items():
        split = name.split("_")[4]
        if name.endswith(".csv"):
            table.append(RemoteFile(name, split, None, gzipped=False, optional=True))
        else:
            table.append(RemoteFile(name, split, _md5(data), (_md5(gz[name + ".gz"]), "0" * 32)))
    return table


class _Server:
    """Serves `files` over HTTP/1.1 with Range support; records every request's path and Range header."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files, self.requests = files, []
        self.ignore_range = False
        self.drop_after: int | None = None  # send this many body bytes, then close (once)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep pytest output quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                name = self.path.split("?")[0].rsplit("/", 1)[-1]
                rng = self.headers.get("Range")
                outer.requests.append((name, rng))
                if name not in outer.files:
                    self.send_error(404)
                    return
                body, start = outer.files[name], 0
                if rng and not outer.ignore_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                payload = body[start:]
                if outer.drop_after is not None:
                    payload, outer.drop_after = payload[: outer.drop_after], None
                    self.close_connection = True
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/records/1/files/{{name}}?download=1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server(pcam_files: dict[str, bytes]):
    served = {
        n + ".gz" if n.endswith(".h5") else n: gzip.compress(b) if n.endswith(".h5") else b
        for n, b in pcam_files.items()
    }
    s = _Server(served)
    s.table = _table(pcam_files, served)
    yield s
    s.close()


def _check_h5(path: Path, key: str, n: int) -> None:
    with h5py.File(path, "r") as f:
        assert f[key].shape == ((n, 96, 96, 3) if key == "x" else (n, 1, 1, 1))
        assert f[key].dtype == np.uint8


def test_full_download_verifies_and_decompresses(tmp_path: Path, server: _Server, pcam_files) -> None:
    results = download_pcam(
        tmp_path, ["train", "valid"], base_url=server.url, files=server.table, progress=False
    )
    assert [r.action for r in results] == ["downloaded"] * 6
    _check_h5(tmp_path / f"{PREFIX}_train_x.h5", "x", 6)
    _check_h5(tmp_path / f"{PREFIX}_valid_y.h5", "y", 4)
    for name, raw in pcam_files.items():
        assert (tmp_path / name).read_bytes() == raw
    assert not list(tmp_path.glob("*.gz")) and not list(tmp_path.glob("*.part"))
    assert all(rng is None for _, rng in server.requests)
    # a second run skips everything without touching the network
    n = len(server.requests)
    again = download_pcam(
        tmp_path, ["train", "valid"], base_url=server.url, files=server.table, progress=False
    )
    assert [r.action for r in again] == ["present"] * 6 and len(server.requests) == n


def test_split_selection_meta_and_keep_gz(tmp_path: Path, server: _Server) -> None:
    results = download_pcam(
        tmp_path, ["valid"], base_url=server.url, files=server.table, meta=False, keep_gz=True, progress=False
    )
    assert sorted(r.name for r in results) == [f"{PREFIX}_valid_x.h5", f"{PREFIX}_valid_y.h5"]
    assert sorted(n for n, _ in server.requests) == [f"{PREFIX}_valid_x.h5.gz", f"{PREFIX}_valid_y.h5.gz"]
    assert (tmp_path / f"{PREFIX}_valid_x.h5.gz").is_file()
    with pytest.raises(HistoscanInputError, match="--split: unknown split.*val"):
        download_pcam(tmp_path, ["val"], base_url=server.url, files=server.table)


def test_checksum_mismatch_quarantines_and_names_both_md5s(tmp_path: Path, server: _Server) -> None:
    name = f"{PREFIX}_train_y.h5"
    good = next(f for f in server.table if f.name == name)
    bad_table = [RemoteFile(name, "train", good.md5, ("f" * 32,))]
    with pytest.raises(HistoscanInputError) as e:
        download_pcam(tmp_path, ["train"], base_url=server.url, files=bad_table, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and name + ".gz" in msg and "f" * 32 in msg and good.gz_md5[0] in msg
    assert not (tmp_path / name).exists() and not (tmp_path / (name + ".gz")).exists()
    assert (tmp_path / (name + ".gz.corrupt")).is_file() and not list(tmp_path.glob("*.part"))
    # decompressed md5 wrong: the .h5 never appears under its real name
    bad_table = [RemoteFile(name, "train", "e" * 32, good.gz_md5)]
    with pytest.raises(
        HistoscanInputError, match=f"{name}: md5 {good.md5} does not match the published e{{32}}"
    ):
        download_pcam(tmp_path, ["train"], base_url=server.url, files=bad_table, progress=False)
    assert not (tmp_path / name).exists() and (tmp_path / (name + ".corrupt")).is_file()


def test_interrupted_transfer_resumes_with_range(tmp_path: Path, server: _Server, pcam_files) -> None:
    name = f"{PREFIX}_train_x.h5"
    table = [f for f in server.table if f.name == name]
    total = len(server.files[name + ".gz"])
    server.drop_after = total // 3
    with pytest.raises(HistoscanInputError, match=r"broke off 1 times.*\.part is kept"):
        download_pcam(tmp_path, ["train"], base_url=server.url, files=table, retries=0, progress=False)
    part = tmp_path / (name + ".gz.part")
    assert part.stat().st_size == total // 3 and not (tmp_path / name).exists()
    results = download_pcam(tmp_path, ["train"], base_url=server.url, files=table, progress=False)
    assert results[0].action == "downloaded"
    assert server.requests == [(name + ".gz", None), (name + ".gz", f"bytes={total // 3}-")]
    assert (tmp_path / name).read_bytes() == pcam_files[name] and not part.exists()


def test_drop_is_resumed_automatically_within_one_run(tmp_path: Path, server: _Server, pcam_files) -> None:
    name = f"{PREFIX}_valid_x.h5"
    server.drop_after = 1000
    download_pcam(tmp_path, ["valid"], base_url=server.url, files=server.table, meta=False, progress=False)
    assert (name + ".gz", "bytes=1000-") in server.requests
    assert (tmp_path / name).read_bytes() == pcam_files[name]


def test_server_ignoring_range_restarts_from_zero(tmp_path: Path, server: _Server, pcam_files) -> None:
    name = f"{PREFIX}_valid_y.h5"
    table = [f for f in server.table if f.name == name]
    (tmp_path / (name + ".gz.part")).write_bytes(b"garbage that must not survive")
    server.ignore_range = True
    download_pcam(tmp_path, ["valid"], base_url=server.url, files=table, progress=False)
    assert server.requests == [(name + ".gz", "bytes=29-")]
    assert (tmp_path / name).read_bytes() == pcam_files[name]


def test_complete_part_answered_416_is_used(tmp_path: Path, server: _Server, pcam_files) -> None:
    name = f"{PREFIX}_valid_y.h5"
    table = [f for f in server.table if f.name == name]
    (tmp_path / (name + ".gz.part")).write_bytes(server.files[name + ".gz"])
    assert download_pcam(tmp_path, ["valid"], base_url=server.url, files=table, progress=False)[0].action == (
        "downloaded"
    )
    assert (tmp_path / name).read_bytes() == pcam_files[name]


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/{{name}}"


def test_offline_fails_fast_and_says_where_to_put_files(tmp_path: Path, server: _Server) -> None:
    out = tmp_path / "pcam"
    t0 = time.perf_counter()
    with pytest.raises(HistoscanInputError) as e:
        download_pcam(out, ["train"], base_url=_closed_port_url(), files=server.table, progress=False)
    assert time.perf_counter() - t0 < 5
    msg = str(e.value)
    assert "\n" not in msg and "could not fetch" in msg and str(out) in msg
    assert f"{PREFIX}_train_x.h5.gz" in msg and "<name>.h5.gz or <name>.h5" in msg
    assert f"histoscan download pcam --out {out}" in msg


def test_manual_placement_is_verified_offline(tmp_path: Path, server: _Server, pcam_files) -> None:
    x, y = f"{PREFIX}_train_x.h5", f"{PREFIX}_train_y.h5"
    (tmp_path / (x + ".gz")).write_bytes(server.files[x + ".gz"])  # placed by hand, compressed
    (tmp_path / y).write_bytes(pcam_files[y])  # placed by hand, already decompressed
    results = download_pcam(
        tmp_path, ["train"], base_url=_closed_port_url(), files=server.table, progress=False
    )
    assert {r.name: r.action for r in results} == {
        x: "decompressed",
        y: "verified",
        f"{PREFIX}_train_meta.csv": "unavailable",
    }
    _check_h5(tmp_path / x, "x", 6)
    assert server.requests == []


def test_manual_corrupt_h5_is_renamed(tmp_path: Path, server: _Server, pcam_files) -> None:
    y = f"{PREFIX}_train_y.h5"
    (tmp_path / y).write_bytes(pcam_files[y][:-10])
    with pytest.raises(HistoscanInputError, match=f"{y}: md5 .* does not match"):
        download_pcam(tmp_path, ["train"], base_url=server.url, files=server.table, progress=False)
    assert not (tmp_path / y).exists() and (tmp_path / (y + ".corrupt")).is_file()


def test_cli_exit_codes(tmp_path: Path, server: _Server, monkeypatch, capsys) -> None:
    monkeypatch.setattr("histoscan.data.download.PCAM_FILES", tuple(server.table))
    assert (
        main(
            [
                "download",
                "pcam",
                "--out",
                str(tmp_path / "a"),
                "--split",
                "valid",
                "--base-url",
                server.url.replace("{name}?download=1", ""),
            ]
        )
        == 0
    )
    assert "ready in" in capsys.readouterr().out
    assert (tmp_path / "a" / f"{PREFIX}_valid_x.h5").is_file()
    monkeypatch.setenv("HISTOSCAN_PCAM_URL", _closed_port_url())
    assert main(["download", "pcam", "--out", str(tmp_path / "b"), "--split", "valid"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("histoscan download: error:") and "could not fetch" in err and err.count("\n") == 1


def test_official_table_matches_published_checksums() -> None:
    by = {f.name: f for f in PCAM_FILES}
    assert len(by) == 9 and sum(f.optional for f in PCAM_FILES) == 3
    tx = by[f"{PREFIX}_train_x.h5"]
    assert tx.md5 == "01844da899645b4d6f84946d417ba453" and tx.gz_md5 == ("1571f514728f59376b705fc836ff4b63",)
    vx, tex = by[f"{PREFIX}_valid_x.h5"], by[f"{PREFIX}_test_x.h5"]
    assert (
        set(vx.gz_md5)
        == set(tex.gz_md5)
        == {"d8c2d60d490dbd479f8199bdfa0cf6ec", "d5b63470df7cfa627aeec8b9dc0c066e"}
    )
    assert vx.md5 != tex.md5
