"""The built wheel works on its own: nothing in the installed package reads the repository.

A wheel is built from (a copy of) the repository and installed into a fresh venv that sees this environment's
site-packages (torch & co.) through a .pth file, not the repository's editable install. `histoscan export` and
`histoscan predict` then run from a folder outside the repository, with an audit hook in the new venv that
records every file the process opens or lists inside the repository (outside its .venv).
"""

from __future__ import annotations

import csv
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest
from run_fixtures import make_run

REPO_ROOT = Path(__file__).resolve().parents[1]
N_IMAGES = 6

# Imported at start-up of every interpreter of the new venv (a `.pth` line): logs, one path a line, each file
# opened or folder listed under $HISTOSCAN_TEST_FORBIDDEN except under $HISTOSCAN_TEST_ALLOWED (os.pathsep list).
AUDIT_HOOK = """\
import os
import sys

_FORBIDDEN = os.environ.get("HISTOSCAN_TEST_FORBIDDEN")
_ALLOWED = [p for p in os.environ.get("HISTOSCAN_TEST_ALLOWED", "").split(os.pathsep) if p]
_LOG = os.environ.get("HISTOSCAN_TEST_READS_LOG")


def _inside(path, root):
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _hook(event, args):
    if event not in ("open", "os.listdir", "os.scandir") or not args or isinstance(args[0], int):
        return
    try:
        path = os.path.abspath(os.fsdecode(args[0]))
    except (TypeError, ValueError):
        return
    if _inside(path, _FORBIDDEN) and not any(_inside(path, a) for a in _ALLOWED) and path != _LOG:
        with open(_LOG, "a") as f:
            f.write(f"{event} {path}\\n")


if _FORBIDDEN and _LOG:
    sys.addaudithook(_hook)
"""

BUILD_INPUTS = ("pyproject.toml", "setup.cfg", "setup.py", "MANIFEST.in", "README.md", "LICENSE", "src")


def _copy_build_inputs(dest: Path) -> Path:
    """The files a wheel is built from, copied to DEST (no build/, egg-info or caches; no README outputs)."""
    dest.mkdir()
    for name in BUILD_INPUTS:
        src = REPO_ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif src.is_file():
            shutil.copy(src, dest / name)
    return dest


def _run(args: list[str | Path], cwd: Path, env: dict[str, str], timeout: int = 300) -> str:
    """Run a command; fail the test with its output when it exits non-zero. Returns stdout + stderr."""
    r = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"{' '.join(map(str, args))} exited {r.returncode}:\n{out}"
    return out


def _clean_env(tmp_path: Path, reads_log: Path) -> dict[str, str]:
    """This environment without PYTHONPATH or the repo's venv activation; cache and audit settings added."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["HISTOSCAN_CACHE"] = str(tmp_path / "cache")
    env["HISTOSCAN_TEST_FORBIDDEN"] = str(REPO_ROOT)
    env["HISTOSCAN_TEST_ALLOWED"] = os.pathsep.join([sys.prefix, *site.getsitepackages()])
    env["HISTOSCAN_TEST_READS_LOG"] = str(reads_log)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _new_venv(tmp_path: Path) -> Path:
    """A venv without pip that sees this environment's site-packages (not its .pth files); its python."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    new_site = Path(purelib)
    (new_site / "histoscan_test_parent_env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    (new_site / "histoscan_test_audit.py").write_text(AUDIT_HOOK)
    (new_site / "histoscan_test_audit.pth").write_text("import histoscan_test_audit\n")
    return python


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_repository(shared_data: Path, tmp_path: Path) -> None:
    reads_log = tmp_path / "repo-reads.log"
    env = _clean_env(tmp_path, reads_log)

    # Build from a copy: an in-tree build would write build/ into the repository and reuse its build/lib,
    # which keeps modules since deleted from src/.
    source = _copy_build_inputs(tmp_path / "source")
    wheels = tmp_path / "wheels"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            wheels,
            source,
        ],
        tmp_path,
        env,
    )
    (wheel,) = wheels.glob("histoscan-*.whl")

    python = _new_venv(tmp_path)
    venv = python.parents[1]
    # pip comes from this environment (via the .pth); --ignore-installed: this environment's editable
    # histoscan is visible too, and must be neither taken as satisfying the wheel nor uninstalled.
    _run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed", wheel],
        tmp_path,
        env,
    )
    assert (venv / "bin" / "histoscan").is_file()

    # The audit hook works: a read inside the repository is recorded.
    _run([python, "-c", f"open({str(REPO_ROOT / 'pyproject.toml')!r}).close()"], tmp_path, env)
    assert str(REPO_ROOT / "pyproject.toml") in reads_log.read_text()
    reads_log.unlink()

    where = _run([python, "-c", "import histoscan; print(histoscan.__file__)"], tmp_path, env).strip()
    installed = Path(where.splitlines()[-1]).resolve()
    assert installed.is_relative_to(venv.resolve()), f"histoscan imported from {installed}, not the new venv"
    assert not installed.is_relative_to(REPO_ROOT), installed
    static = sorted(p.name for p in (REPO_ROOT / "src" / "histoscan" / "serve" / "static").iterdir())
    assert sorted(p.name for p in (installed.parent / "serve" / "static").iterdir()) == static  # package data
    templates = sorted(p.name for p in (REPO_ROOT / "src" / "histoscan" / "templates").glob("*.html.j2"))
    assert sorted(p.name for p in (installed.parent / "templates").glob("*.html.j2")) == templates
    render = (
        "from histoscan.utils.html import render_html as r; "
        "print(r('cohort_index.html.j2', title='T&', note='', head=[], rows=[]))"
    )
    assert "<title>T&amp;</title>" in _run([python, "-c", render], tmp_path, env)  # the installed templates

    run = make_run(tmp_path / "run", image_size=48, threshold=0.5)
    patches = tmp_path / "patches"
    patches.mkdir()
    sources = sorted((shared_data / "kaggle-hcd-test").glob("*.tif"))[:N_IMAGES]
    assert len(sources) == N_IMAGES, f"too few patches in {shared_data / 'kaggle-hcd-test'}"
    for f in sources:
        shutil.copy(f, patches / f.name)

    cli = venv / "bin" / "histoscan"
    outputs = [_run([cli, "export", run, "--out", run / "model.onnx"], tmp_path, env)]
    probs = {}
    assert (run / "model.onnx").is_file()
    for model, backend, out in (
        (run / "model.onnx", "onnx", "preds-onnx.csv"),
        (run, "torch", "preds-torch.csv"),
    ):
        cmd = [cli, "predict", model, "--data", patches, "--out", out, "--backend", backend]
        outputs.append(_run(cmd, tmp_path, env))
        with (tmp_path / out).open(newline="") as f:
            rows = list(csv.DictReader(f))
        assert sorted(r["id"] for r in rows) == sorted(f.stem for f in sources), rows
        assert all(0.0 <= float(r["probability"]) <= 1.0 for r in rows), rows
        probs[backend] = {r["id"]: float(r["probability"]) for r in rows}
    assert all(abs(probs["onnx"][i] - probs["torch"][i]) <= 1e-4 for i in probs["torch"]), probs

    reads = reads_log.read_text() if reads_log.exists() else ""
    assert not reads, f"the installed package read the repository:\n{reads}"
    assert not any(str(REPO_ROOT / "src") in o for o in outputs), "\n".join(outputs)
