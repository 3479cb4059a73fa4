"""The layering of histoscan's subpackages, checked by import-linter (`[tool.importlinter]` in pyproject.toml).

Top to bottom: cli; cv; the stages (training, evaluation, explain, export, slide, serve, bench); gradcam;
inference (the model seam); run; models; stain; data; folders (the folder owners); scoring; config; ranges; utils;
errors. A module may import from the layers below it, never from those above; no stage imports another (an
independence contract).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint_imports(cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the venv's lint-imports in `cwd` (which holds the pyproject.toml), without a cache folder."""
    env = dict(os.environ, COLUMNS="200", NO_COLOR="1")  # wide enough that no import chain is wrapped
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_layers_contract_is_kept() -> None:
    r = _lint_imports(REPO_ROOT)
    assert r.returncode == 0, f"lint-imports failed (exit {r.returncode}):\n{r.stdout}\n{r.stderr}"
    assert " 0 broken" in r.stdout, r.stdout


def test_wrong_way_import_breaks_the_contract(tmp_path: Path) -> None:
    """The contract can fail: a copy of the source where the bottom layer (errors) imports the top one (cli)."""
    shutil.copytree(
        REPO_ROOT / "src" / "histoscan",
        tmp_path / "src" / "histoscan",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    shutil.copy(REPO_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    errors = tmp_path / "src" / "histoscan" / "errors.py"
    errors.write_text(
        errors.read_text() + "\nimport histoscan.cli  # wrong way: the bottom layer imports the top\n"
    )

    r = _lint_imports(tmp_path, pythonpath=tmp_path / "src")
    assert r.returncode != 0, f"lint-imports passed on a wrong-way import:\n{r.stdout}\n{r.stderr}"
    assert "BROKEN" in r.stdout, r.stdout
    assert "histoscan.errors -> histoscan.cli" in r.stdout, r.stdout


def test_a_stage_importing_another_breaks_the_independence_contract(tmp_path: Path) -> None:
    """Stages stand alone: a copy of the source where slide imports explain fails "stages stand alone"."""
    shutil.copytree(
        REPO_ROOT / "src" / "histoscan",
        tmp_path / "src" / "histoscan",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    shutil.copy(REPO_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    tiles = tmp_path / "src" / "histoscan" / "slide" / "tiles.py"
    tiles.write_text(
        tiles.read_text() + "\nimport histoscan.explain.gradcam  # a stage reaching into another\n"
    )

    r = _lint_imports(tmp_path, pythonpath=tmp_path / "src")
    assert r.returncode != 0, f"lint-imports passed on a stage-to-stage import:\n{r.stdout}\n{r.stderr}"
    assert "stages stand alone BROKEN" in r.stdout, r.stdout
    assert "histoscan.slide.tiles -> histoscan.explain.gradcam" in r.stdout, r.stdout


def test_no_import_cycle_anywhere_in_the_package() -> None:
    """No module reaches itself through imports, lazy (function-level) ones included: no hidden circle."""
    import grimp

    graph = grimp.build_graph("histoscan", include_external_packages=False)
    cycles = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back:
                cycles.append(" -> ".join([importer, *back]))
    assert not cycles, "import cycles:\n" + "\n".join(cycles[:10])
