"""Whole-slide maps for a cohort: resumable, exactly-once, on this process or a Ray cluster."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from histoscan import __version__
from histoscan.errors import HistoscanInputError, Interrupted
from histoscan.folders import CohortDir, SlideDir
from histoscan.inference.card import ModelCard
from histoscan.inference.predictor import load_predictor
from histoscan.slide.cohort_items import (
    CohortItem,
    list_cohort,
    model_id,
    settings_key,
    slide_fingerprint,
)
from histoscan.slide.cohort_report import COLUMNS, write_cohort_csv, write_index
from histoscan.slide.engines import LocalEngine, RayEngine, SlideResult, import_ray, worker_info
from histoscan.slide.tiles import SlideOptions
from histoscan.utils.fs import atomic_write_json, replace_folder

__all__ = ["COLUMNS", "CohortItem", "CohortReport", "list_cohort", "run_cohort"]


@dataclass
class CohortReport:
    """What a cohort run did: one row per slide of INPUT (cohort.csv's columns) and this run's figures."""

    out: Path
    rows: list[dict]
    model_id: str
    engine: str
    workers: int
    mapped: int = 0  # slides mapped by this run (ok or failed)
    skipped: int = 0  # already done with the same model and settings
    tiles: int = 0  # tissue tiles classified by this run
    restarts: int = 0  # Ray workers that died and were replaced
    seconds: float = 0.0
    peak_rss_mb: dict[str, float] = field(default_factory=dict)  # per worker (host:pid)
    froc: dict | None = None  # with --truth: Camelyon16's FROC pooled over the scored slides

    @property
    def n_ok(self) -> int:
        return sum(r["status"] == "ok" for r in self.rows)

    @property
    def n_failed(self) -> int:
        return sum(r["status"] == "failed" for r in self.rows)


def run_cohort(
    model: str | Path,
    source: str | Path,
    out: str | Path,
    options: SlideOptions | None = None,
    *,
    engine: Literal["local", "ray"] = "local",
    backend: str = "auto",
    device: str = "auto",
    force: bool = False,
    truth: str | Path | None = None,
    workers: int | None = None,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
    ray_address: str | None = None,
    progress: bool = False,
    on_result: Callable[[dict], None] | None = None,
) -> CohortReport:
    """Map every slide of `source` into `out/<id>/`, skipping slides already done, and tabulate them.

    A slide is done when `out/<id>/.done.json` records the same slide fingerprint (path, size, mtime, first
    and last MiB), model id (model name + weights SHA-256) and mapping settings; it is then skipped (unless
    `force`). Everything else is mapped; its folder is built in `out/.work/` and moved into place with the
    marker already inside, so a crash at any point never leaves a slide counted as done. A slide that fails
    is recorded with a one-line error and the others go on. cohort.csv and index.html are rebuilt from the
    markers at the end of every run, also after Ctrl-C.

    Layout of `out`: `<id>/` per slide (what `histoscan slide` writes, plus thumbnail.jpg and `.done.json`),
    `cohort.csv`, `index.html`, and hidden state: `.cohort.json` (marks the folder as a cohort), `.lock`
    (one run at a time), `.work/` (slides being built) and `.failed/<id>.json` (each slide's last failure).

    Args:
        model: run folder, checkpoint or .onnx (loaded once per worker).
        source: a folder of slides or a CSV with path[,mpp,id] (see :func:`list_cohort`).
        out: the cohort folder (created; an existing cohort is resumed).
        options: how each slide is mapped (its `force` is ignored: see `force`).
        engine: "local" (this process, sequential) or "ray".
        backend, device: as for `load_predictor`.
        force: remap every slide; also allows writing into a non-empty folder that is not a cohort.
        workers, cpus_per_worker, gpus_per_worker, ray_address: Ray only (see :class:`RayEngine`).
        progress: tqdm bar per slide (local engine).
        on_result: called with each slide's row as it is finished (or skipped, with `skipped` set).
        truth: outlines to score the maps against (a folder of <slide stem>.xml / .geojson, or one file for a
            one-slide cohort; slide/annotations.py); slides without a file are mapped, not scored. The cohort's
            pooled FROC is in the report (`froc`) and the index.

    Raises:
        HistoscanInputError: bad INPUT, MODEL or options (before any slide is mapped).
        Interrupted: Ctrl-C (what is done stays done; rerun to resume).
    """
    t0 = time.perf_counter()
    opts = options or SlideOptions()
    dest = Path(out).expanduser()
    items = list_cohort(source, exclude=dest)
    if truth is not None:
        items = _with_truth(items, Path(truth))
    if engine not in ("local", "ray"):
        raise HistoscanInputError(f"--engine {engine}: choose local or ray")
    if engine == "local" and workers not in (None, 1):
        raise HistoscanInputError(f"--workers {workers}: more than one worker needs --engine ray")
    _check_out(dest, force)
    if engine == "ray":
        import_ray()  # fail before loading anything when Ray is missing
    predictor = load_predictor(model, backend, "cpu" if engine == "ray" else device)  # type: ignore[arg-type]
    card, mid = predictor.card, model_id(predictor.card)
    runner: LocalEngine | RayEngine
    if engine == "ray":
        del predictor  # the workers load their own
        runner = RayEngine(
            model, backend, device, opts, mid, workers, cpus_per_worker, gpus_per_worker, ray_address
        )
    else:
        runner = LocalEngine(predictor, opts, progress)
    report = CohortReport(dest, [], mid, runner.name, 1)
    notify = on_result or (lambda row: None)
    created = not dest.exists()
    interrupted = False
    with _cohort_folder(dest, source):
        keys, todo, unreadable = _plan(dest, items, card, mid, opts, force, report, notify)
        by_id = {it.id: it for it in items}

        def commit(result: SlideResult) -> None:
            row = _commit(dest, by_id[result.id], keys[result.id], result, report)
            notify({**row, "skipped": False})

        try:
            for result in unreadable:
                result.worker = worker_info(runner.name)
                commit(result)
            runner.run(todo, CohortDir(dest).work, commit)
        except KeyboardInterrupt:
            interrupted = True
        except HistoscanInputError:  # the engine could not start: a new DIR is not left behind
            if created and not report.mapped:
                shutil.rmtree(dest, ignore_errors=True)
            raise
        finally:
            if dest.is_dir():
                _finish(dest, items, keys, runner, report, t0)
    if interrupted:
        raise Interrupted(
            f"{report.n_ok} of {len(items)} slides done in {dest}; rerun the same command to resume"
        )
    return report


def _plan(
    dest: Path,
    items: list[CohortItem],
    card: ModelCard,
    mid: str,
    opts: SlideOptions,
    force: bool,
    report: CohortReport,
    notify: Callable[[dict], None],
) -> tuple[dict[str, dict], list[CohortItem], list[SlideResult]]:
    """Each slide's key (fingerprint, model id, settings); the slides to map; the unreadable ones."""
    keys: dict[str, dict] = {}
    todo: list[CohortItem] = []
    unreadable: list[SlideResult] = []
    for item in items:
        try:
            fp = slide_fingerprint(item.path)
        except OSError as e:
            fp = ""
            why = "slide not found" if not item.path.exists() else f"cannot read ({e.strerror or e})"
            unreadable.append(SlideResult(item.id, "failed", 0.0, f"{item.path}: {why}"))
        keys[item.id] = {"fingerprint": fp, "model_id": mid, "settings": settings_key(card, opts, item)}
        row = _row(dest, item, keys[item.id])
        if fp and not force and row["status"] == "ok":
            report.skipped += 1
            notify({**row, "skipped": True})
        elif fp:
            todo.append(item)
    return keys, todo, unreadable


def _finish(
    dest: Path,
    items: list[CohortItem],
    keys: dict[str, dict],
    runner: LocalEngine | RayEngine,
    report: CohortReport,
    t0: float,
) -> None:
    """cohort.csv and index.html rebuilt from the markers (every run, also an interrupted one)."""
    report.rows = [_row(dest, it, keys[it.id]) for it in items if it.id in keys]
    report.workers, report.restarts = runner.workers, runner.restarts
    report.seconds = time.perf_counter() - t0
    write_cohort_csv(CohortDir(dest).csv_path, report.rows)
    report.froc = _pooled_froc(dest, report.rows)
    scored = ""
    if report.froc is not None and report.froc["score"] is not None:
        f = report.froc
        scored = (f" · FROC {f['score']:.3f} over {f['slides']} scored slides, {f['lesions']} lesions "
                  f"(sensitivity at 1/4..8 FP per slide: "
                  + ", ".join(f"{v:.2f}" for k, v in f.items() if k.startswith("sens_at")) + ")")  # fmt: skip
    note = (
        f"{report.n_ok} ok, {report.n_failed} failed of {len(items)} slides · model {report.model_id}{scored} · "
        f"updated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC · histoscan {__version__}"
    )
    write_index(dest, report.rows, f"histoscan slides: {dest.name}", note)


def _with_truth(items: list[CohortItem], truth: Path) -> list[CohortItem]:
    """Each slide with its outlines file (annotation_files: a single file serves a one-slide cohort only)."""
    from dataclasses import replace

    from histoscan.slide.annotations import annotation_files

    files = annotation_files([it.path for it in items], truth, "--truth")
    return [replace(it, truth=f) for it, f in zip(items, files, strict=True)]


def _pooled_froc(dest: Path, rows: list[dict]) -> dict | None:
    """Camelyon16's FROC over the ok slides that were scored (their truth.json detections), or None."""
    import numpy as np

    from histoscan.slide.truth import froc

    counts = []
    for r in rows:
        t = SlideDir(CohortDir(dest).slide(r["id"])).read_truth() if r["status"] == "ok" else None
        if t is not None:
            counts.append(np.asarray(t["detections"]["counts"]))
    if not counts:
        return None
    return {"slides": len(counts), "lesions": int(sum(c[0, 1] for c in counts)), **froc(counts)}


def _check_out(dest: Path, force: bool) -> None:
    """DIR may be new, empty, an earlier cohort (resumed), or anything else with --force."""
    if dest.exists() and not dest.is_dir():
        raise HistoscanInputError(f"--out {dest}: exists and is not a folder")
    if dest.is_dir() and not CohortDir(dest).is_cohort() and any(dest.iterdir()) and not force:
        raise HistoscanInputError(
            f"--out {dest}: folder is not empty and not a histoscan slides output (use --force to write into it)"
        )


@contextlib.contextmanager
def _cohort_folder(dest: Path, source: str | Path) -> Iterator[None]:
    """Create and lock DIR for this run; clear what an interrupted run left in its work area."""
    dest.mkdir(parents=True, exist_ok=True)
    folder = CohortDir(dest)
    lock = folder.lock_path.open("w")
    try:
        try:
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # Windows: no lock
            pass
        except BlockingIOError:
            raise HistoscanInputError(f"--out {dest}: another histoscan slides run is using it") from None
        if not folder.is_cohort():
            created = datetime.now(UTC).isoformat(timespec="seconds")
            atomic_write_json(
                folder.mark_path, {"created": created, "input": str(source), "histoscan": __version__}
            )
        _clean(dest)
        yield
    finally:
        _clean(dest)
        lock.close()


def _clean(dest: Path) -> None:
    """Remove the work area and any half-moved folder (`.<id>.*.partial`, `.<id>.old-*`)."""
    shutil.rmtree(CohortDir(dest).work, ignore_errors=True)
    for p in [*dest.glob(".*.partial"), *dest.glob(".*.old-*")]:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _row(dest: Path, item: CohortItem, key: dict) -> dict:
    """cohort.csv's row for `item`, from its markers: ok, failed, or pending (not finished by any run)."""
    row = {k: None for k in COLUMNS} | {"id": item.id, "path": str(item.path), "model_id": key["model_id"]}
    folder = CohortDir(dest)
    done = _read_json(folder.done_marker(item.id))
    mapped = SlideDir(folder.slide(item.id)).summary_path.is_file()
    if done and all(done.get(k) == v for k, v in key.items()) and mapped:
        return row | {k: done.get(k) for k in COLUMNS if k not in row or row[k] is None} | {"status": "ok"}
    failed = _read_json(folder.failure(item.id))
    if failed and all(failed.get(k) == v for k, v in key.items()):
        return row | {"status": "failed", "error": failed.get("error"), "seconds": failed.get("seconds")}
    return row | {"status": "pending", "error": ""}


def _commit(dest: Path, item: CohortItem, key: dict, result: SlideResult, report: CohortReport) -> dict:
    """Record one finished slide: outputs + marker moved into DIR/<id>/ in one rename, or its failure."""
    record = {
        "id": item.id,
        "path": str(item.path),
        **key,
        "status": result.status,
        "error": result.error,
        "seconds": round(result.seconds, 3),
        "attempts": result.attempts,
        "worker": result.worker,
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    report.mapped += 1
    if result.worker:
        w = f"{result.worker['host']}:{result.worker['pid']}"
        report.peak_rss_mb[w] = max(report.peak_rss_mb.get(w, 0.0), result.worker["peak_rss_mb"])
    folder = CohortDir(dest)
    failure = folder.failure(item.id)
    if result.status != "ok":
        atomic_write_json(failure, record | {"detail": result.detail})
        return {k: record.get(k) for k in COLUMNS}
    s = result.summary or {}
    record |= {
        "tissue_mm2": s.get("tissue_area_mm2"),
        "tumour_mm2": s.get("tumour_area_mm2"),
        "max_probability": s.get("max_probability"),
        "tumour_tiles": s.get("n_tumour_tiles"),
        "tissue_tiles": s.get("n_tissue_tiles"),
        "warnings": s.get("warnings", []),
        **{f"truth_{k}": (s.get("truth") or {}).get(k) for k in ("tile_auc", "dice", "lesions", "froc")},
    }
    staged = Path(result.folder) if result.folder else _unpack(result.files or {}, folder.work / item.id)
    atomic_write_json(folder.done_marker(staged), record)
    replace_folder(staged, folder.slide(item.id))
    failure.unlink(missing_ok=True)
    report.tiles += int(record["tissue_tiles"] or 0)
    return {k: record.get(k) for k in COLUMNS} | {"warnings": record["warnings"]}


def _unpack(files: dict[str, bytes], folder: Path) -> Path:
    """Write a worker's returned outputs into `folder` (relative paths only)."""
    shutil.rmtree(folder, ignore_errors=True)
    for rel, data in files.items():
        p = folder / rel
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise ValueError(f"worker returned an unsafe path {rel!r}")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    folder.mkdir(parents=True, exist_ok=True)
    return folder
