"""Cohorts of slides: listing, failures recorded, resume, exactly-once after a crash, and Ray with a killed worker."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from run_fixtures import make_run

from histoscan.cli import main
from histoscan.errors import HistoscanInputError, Interrupted
from histoscan.slide import mapping
from histoscan.slide.cohort import list_cohort, run_cohort
from histoscan.slide.io import open_slide
from histoscan.slide.tiles import OUTPUTS, SlideOptions

CMU_MPP = 0.499
OPTS = SlideOptions(read_threads=1, batch_size=64)


@pytest.fixture(scope="module")
def run32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Untrained simple-cnn at 32 px, patches at 4 µm/px (few tiles per slide)."""
    return make_run(tmp_path_factory.mktemp("run") / "run32", image_size=32, mpp=4.0)


def _write_pyramid(path: Path, img: np.ndarray, mpp: float | None) -> Path:
    """A tiled two-level TIFF (SubIFD pyramid), with resolution tags when `mpp` is given."""
    kw = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"} if mpp else {}
    with tifffile.TiffWriter(path) as tw:
        tw.write(img, tile=(128, 128), photometric="rgb", subifds=1, **kw)
        tw.write(img[::2, ::2], tile=(128, 128), photometric="rgb", subfiletype=1, **kw)
    return path


@pytest.fixture(scope="module")
def crops(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Four pyramidal TIFFs of real tissue cut from cmu-1-small-region (768 px at its 0.499 µm/px)."""
    root = tmp_path_factory.mktemp("crops")
    reader = open_slide(shared_data / "slides" / "cmu-1-small-region.svs")
    origins = [(500, 900), (1200, 900), (500, 1700), (1200, 1700)]
    out = [
        _write_pyramid(root / f"crop{i}.tif", reader.read_region(x, y, 0, (768, 768)), CMU_MPP)
        for i, (x, y) in enumerate(origins)
    ]
    reader.close()
    return out


def _csv(path: Path, rows: list[tuple]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "mpp", "id"])
        w.writerows(rows)
    return path


def _rows(out: Path) -> list[dict]:
    with (out / "cohort.csv").open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the slides map_slide is called for (the real map_slide still runs)."""
    calls: list[str] = []
    real = mapping.map_slide

    def counting(predictor, slide, out, options=None, progress=True, truth=None):
        calls.append(Path(slide).stem)
        return real(predictor, slide, out, options, progress, truth=truth)

    monkeypatch.setattr(mapping, "map_slide", counting)
    return calls


def test_list_folder_ids_and_csv_errors(tmp_path: Path) -> None:
    for rel in ("b.svs", "a b.tif", "sub/b.svs", "sub/c.NDPI", ".hidden/x.svs", "notes.txt", "out/y.svs"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    items = list_cohort(tmp_path, exclude=tmp_path / "out")
    assert [i.id for i in items] == ["a_b", "b", "sub__b", "sub__c"]
    assert all(i.path.is_absolute() and i.mpp is None for i in items)

    good = _csv(tmp_path / "c.csv", [("b.svs", "", ""), ("sub/b.svs", "0.25", ""), ("a b.tif", "", "b")])
    got = list_cohort(good)
    assert [(i.id, i.mpp) for i in got] == [("b-2", None), ("b-3", 0.25), ("b", None)]
    assert got[1].path == tmp_path / "sub" / "b.svs"
    bad = {
        "mpp": ([("b.svs", "fast", "")], "line 2: mpp 'fast'"),
        "id": ([("b.svs", "", "../up")], "line 2: id '../up'"),
        "dup-id": ([("b.svs", "", "k"), ("sub/b.svs", "", "K")], "line 3: id 'K' repeats line 2"),
        "dup-path": ([("b.svs", "", ""), ("./b.svs", "", "")], "line 3: ./b.svs repeats line 2"),
        "empty": ([("", "", "")], "line 2: empty path"),
    }
    for name, (rows, msg) in bad.items():
        with pytest.raises(HistoscanInputError, match=rf"{name}\.csv: {msg}"):
            list_cohort(_csv(tmp_path / f"{name}.csv", rows))
    (tmp_path / "nopath.csv").write_text("file,mpp\nb.svs,1\n")
    with pytest.raises(HistoscanInputError, match=r"nopath\.csv: line 1: no 'path' column"):
        list_cohort(tmp_path / "nopath.csv")
    with pytest.raises(HistoscanInputError, match=r"notes\.txt: INPUT must be a folder"):
        list_cohort(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(HistoscanInputError, match=r"empty: no slides"):
        list_cohort(tmp_path / "empty")


def test_cli_failures_recorded_others_go_on_then_resume(
    run32: Path, shared_data: Path, crops: list[Path], tmp_path: Path, capsys, counted: list[str]
) -> None:
    slides = shared_data / "slides"
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(crops[0].read_bytes()[:3000])  # header intact, tiles cut off
    nores = _write_pyramid(tmp_path / "nores.tif", np.full((256, 256, 3), 200, np.uint8), None)
    garbage = tmp_path / "garbage.svs"
    garbage.write_bytes(os.urandom(4096))
    cohort = _csv(
        tmp_path / "cohort.csv",
        [
            (slides / "cmu-1-small-region.svs", "", "cmu"),
            (slides / "tcga-cr-7395-01a-01-ts1.svs", "0.5", "tcga"),  # records no µm/px: given here
            (crops[0], "", ""),
            (corrupt, "", ""),
            (nores, "", ""),
            (garbage, "", ""),
        ],
    )
    out = tmp_path / "out"
    args = ["slides", str(run32), str(cohort), "--out", str(out), "--no-progress", "--read-threads", "1"]
    assert main(args) == 3
    cap = capsys.readouterr()
    assert "3 of 6 slides failed" in cap.err and cap.err.count("\n") == 1
    assert sorted(line.split(":")[0] for line in cap.out.splitlines()[:6]) == sorted(
        ["cmu", "tcga", "crop0", "corrupt", "nores", "garbage"]
    )
    rows = {r["id"]: r for r in _rows(out)}
    assert len(rows) == 6 and len(_rows(out)) == 6
    assert {k for k, r in rows.items() if r["status"] == "ok"} == {"cmu", "tcga", "crop0"}
    assert "no µm/px" in rows["nores"]["error"] and "not a slide" in rows["garbage"]["error"]
    assert "corrupt" in rows["corrupt"]["error"].lower() and rows["corrupt"]["status"] == "failed"
    assert all("\n" not in r["error"] for r in rows.values())
    assert float(rows["cmu"]["tissue_mm2"]) > 0 and int(rows["tcga"]["tumour_tiles"]) >= 0
    assert len({r["model_id"] for r in rows.values()}) == 1 and rows["cmu"]["model_id"].startswith(
        "simple-cnn@"
    )
    for sid in ("cmu", "tcga", "crop0"):
        assert {*OUTPUTS, "thumbnail.jpg", ".done.json"} <= {p.name for p in (out / sid).iterdir()}
    assert not (out / "nores").exists() and not (out / ".work").exists()
    page = (out / "index.html").read_text()
    assert 'src="cmu/overlay.png"' in page and 'src="tcga/thumbnail.jpg"' in page and "nores" in page
    assert "http://" not in page and "https://" not in page and "<script>" in page
    assert sorted(counted) == sorted(
        ["cmu-1-small-region", "tcga-cr-7395-01a-01-ts1", "crop0", "corrupt", "nores", "garbage"]
    )

    # resume: delete one finished slide; the rerun maps it and the failed ones, nothing else
    done_mtime = (out / "cmu" / ".done.json").stat().st_mtime_ns
    shutil.rmtree(out / "tcga")
    counted.clear()
    assert main(args) == 3
    assert sorted(counted) == ["corrupt", "garbage", "nores", "tcga-cr-7395-01a-01-ts1"]
    assert "2 slides already done" in capsys.readouterr().out
    assert (out / "cmu" / ".done.json").stat().st_mtime_ns == done_mtime
    assert [r["status"] for r in _rows(out)] == ["ok", "ok", "ok", "failed", "failed", "failed"]

    # --force redoes everything; a non-cohort folder is refused without it
    counted.clear()
    assert main([*args, "--force"]) == 3 and len(counted) == 6
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    assert main(["slides", str(run32), str(cohort), "--out", str(tmp_path / "other")]) == 2
    assert "not a histoscan slides output" in capsys.readouterr().err


def test_crash_mid_slide_never_counts_as_done(
    run32: Path, crops: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Crash(BaseException):
        """A hard stop no `except Exception` catches (as a kill would be)."""

    source = _csv(tmp_path / "c.csv", [(p, "", "") for p in crops[:3]])
    out = tmp_path / "out"
    real = mapping.map_slide

    def crash_on_crop1(predictor, slide, dest, options=None, progress=True, truth=None):
        if Path(slide).stem == "crop1":
            staged = Path(dest).parent / f".{Path(dest).name}.x.partial"  # as staged_folder names it
            staged.mkdir(parents=True)
            (staged / "heatmap.npy").write_bytes(b"half")
            raise Crash
        return real(predictor, slide, dest, options, progress, truth=truth)

    monkeypatch.setattr(mapping, "map_slide", crash_on_crop1)
    with pytest.raises(Crash):
        run_cohort(run32, source, out, OPTS)
    status = {r["id"]: r["status"] for r in _rows(out)}
    assert status == {"crop0": "ok", "crop1": "pending", "crop2": "pending"}
    assert not (out / "crop1").exists() and not (out / ".work").exists()

    # what a SIGKILL would leave: a half-built work folder and a half-swapped output
    (out / ".work" / "crop1").mkdir(parents=True)
    (out / ".work" / "crop1" / "summary.json").write_text("{}")
    (out / ".crop2.abc.partial").mkdir()
    (out / "crop2").mkdir()
    (out / "crop2" / "summary.json").write_text("{}")  # outputs without a marker: not done
    calls: list[str] = []

    def count(predictor, slide, dest, options=None, progress=True, truth=None):
        calls.append(Path(slide).stem)
        return real(predictor, slide, dest, options, progress, truth=truth)

    monkeypatch.setattr(mapping, "map_slide", count)
    report = run_cohort(run32, source, out, OPTS)
    assert sorted(calls) == ["crop1", "crop2"] and report.skipped == 1 and report.n_ok == 3
    assert [r["status"] for r in _rows(out)] == ["ok", "ok", "ok"]
    assert not (out / ".work").exists() and not list(out.glob(".*.partial"))
    assert json.loads((out / "crop2" / "summary.json").read_text())["n_tissue_tiles"] > 0

    # Ctrl-C: what is finished stays, the rest is pending, and the message says how to resume
    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(mapping, "map_slide", interrupt)
    with pytest.raises(Interrupted, match="3 of 4 slides done.*rerun the same command"):
        run_cohort(run32, _csv(tmp_path / "d.csv", [(p, "", "") for p in crops]), out, OPTS)
    assert [r["status"] for r in _rows(out)] == ["ok", "ok", "ok", "pending"]


def test_other_model_or_settings_remap(
    run32: Path, crops: list[Path], tmp_path: Path, counted: list[str]
) -> None:
    source = _csv(tmp_path / "c.csv", [(crops[0], "", "")])
    out = tmp_path / "out"
    first = run_cohort(run32, source, out, OPTS)
    run_cohort(run32, source, out, OPTS)
    assert counted == ["crop0"]
    other = run_cohort(make_run(tmp_path / "other", image_size=32, mpp=4.0, seed=1), source, out, OPTS)
    assert other.model_id != first.model_id and counted == ["crop0", "crop0"]
    run_cohort(run32, source, out, SlideOptions(read_threads=1, threshold=0.9))
    assert len(counted) == 3 and _rows(out)[0]["model_id"] == first.model_id


def test_engine_ray_without_ray_exits_2(
    run32: Path, crops: list[Path], tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    args = ["slides", str(run32), str(crops[0].parent), "--out", str(tmp_path / "o"), "--engine", "ray"]
    assert main(args) == 2
    assert "pip install 'histoscan[cluster]'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert (
        main(["slides", str(run32), str(crops[0].parent), "--out", str(tmp_path / "o"), "--workers", "2"])
        == 2
    )


try:
    import ray
except ImportError:  # the [cluster] extra (and so [dev]) installs it
    ray = None
needs_ray = pytest.mark.skipif(ray is None, reason="ray is not installed (pip install 'histoscan[cluster]')")


@needs_ray
def test_ray_two_workers_each_slide_once(run32: Path, crops: list[Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    args = [
        "slides",
        str(run32),
        str(crops[0].parent),
        "--out",
        str(out),
        "--engine",
        "ray",
        "--workers",
        "2",
    ]
    assert main([*args, "--read-threads", "1"]) == 0
    assert not ray.is_initialized()  # the local Ray it started is stopped
    rows = _rows(out)
    assert sorted(r["id"] for r in rows) == ["crop0", "crop1", "crop2", "crop3"]
    assert {r["status"] for r in rows} == {"ok"}
    markers = [json.loads((out / r["id"] / ".done.json").read_text()) for r in rows]
    assert {m["worker"]["engine"] for m in markers} == {"ray"} and {m["attempts"] for m in markers} == {1}
    assert len({m["worker"]["pid"] for m in markers}) == 2  # both workers took slides
    assert "on 2 ray workers" in capsys.readouterr().out


def _kill_first_mapping_worker(killed: list[int], stop: threading.Event) -> None:
    """SIGKILL the first Ray worker process seen mapping a slide (its title is ray::CohortWorker.map)."""
    import psutil

    me = psutil.Process()
    while not stop.is_set() and not killed:
        for p in me.children(recursive=True):
            try:
                if p.cmdline()[:1] == ["ray::CohortWorker.map"]:
                    time.sleep(0.1)  # inside the slide
                    os.kill(p.pid, signal.SIGKILL)
                    killed.append(p.pid)
                    return
            except (psutil.Error, OSError):
                continue
        time.sleep(0.01)


@needs_ray
def test_ray_worker_killed_mid_cohort_every_slide_once(
    run32: Path, crops: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    killed: list[int] = []
    stop = threading.Event()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    killer = threading.Thread(target=_kill_first_mapping_worker, args=(killed, stop), daemon=True)
    try:
        killer.start()
        report = run_cohort(run32, crops[0].parent, out, OPTS, engine="ray", workers=2)
    finally:
        stop.set()
        ray.shutdown()
    assert killed and report.restarts == 1
    rows = _rows(out)
    assert sorted(r["id"] for r in rows) == ["crop0", "crop1", "crop2", "crop3"]
    assert {r["status"] for r in rows} == {"ok"} and report.mapped == 4
    attempts = sorted(json.loads((out / r["id"] / ".done.json").read_text())["attempts"] for r in rows)
    assert attempts == [1, 1, 1, 2]  # the killed worker's slide was redone once, elsewhere
    assert {p.name for p in out.glob(".*")} <= {".cohort.json", ".lock", ".failed"}


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--input", "missing"], "missing: no such folder or CSV"),
        (["--csv", "bad"], "bad.csv: line 2: mpp 'x'"),
        (["--workers", "0"], "--workers 0: must be at least 1"),
        (["--workers", "2"], "need --engine ray"),
        (["--read-threads", "0"], "--read-threads 0: must be at least 1"),
        (["--model", "nope"], "nope: no such run folder"),
    ],
)
def test_cli_bad_input_one_line_exit_2_nothing_written(
    run32: Path, crops: list[Path], tmp_path: Path, capsys, extra: list[str], needle: str
) -> None:
    model, source, rest = str(run32), str(crops[0].parent), list(extra)
    if rest[0] == "--input":
        source = str(tmp_path / rest[1])
        rest = []
    elif rest[0] == "--csv":
        (tmp_path / "bad.csv").write_text(f"path,mpp\n{crops[0]},x\n")
        source, rest = str(tmp_path / "bad.csv"), []
    elif rest[0] == "--model":
        model, rest = str(tmp_path / rest[1]), []
    try:
        code = main(["slides", model, source, "--out", str(tmp_path / "o"), *rest])
    except SystemExit as e:  # a value outside its range stops at parsing
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("histoscan slides: error: ") and needle in err, err
    assert not (tmp_path / "o").exists()
