"""One owner per folder kind: no file name an owner declares is spelled in code outside its owner's module.

The names are collected from the owner classes (every upper-case str class attribute of each class in
histoscan.folders.OWNERS), never from a hand list. The scan reads src/histoscan/**/*.py and benchmarks/*.py
with the ast module and looks at every string constant (f-string pieces included) except:
- a string statement (a docstring, or an attribute's doc string): it does nothing at run time;
- CLI help text: the value of a keyword argument or dict entry named help, description, epilog or usage, or
  what a call passes by position to such a parameter of a function defined in the same module.
A constant is cut into tokens at white space and , ; : ( ) [ ] < > = | ' " ` (a trailing "." dropped), each
token into path components at "/". A component violates name N when it is N, starts with N when N is a
prefix (ends with "-", e.g. fold-), or ends with N when N is a suffix (starts with "_", e.g. _gradcam.png).
A plain word (letters only, e.g. "checkpoints", "explain") counts only where it is used as a path: as an
operand of `/`, or as a component of a constant holding a "/" (not leading: "/v1/explain" is a URL route) —
elsewhere it is just a word.
"""

from __future__ import annotations

import ast
import inspect
import re
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from histoscan.folders import OWNERS
from histoscan.ranges import opt

REPO = Path(__file__).resolve().parents[1]
SCANNED = [REPO / "src" / "histoscan", REPO / "benchmarks"]
HELP_KEYWORDS = {"help", "description", "epilog", "usage"}
_SEPARATORS = re.compile(r"[\s,;:()\[\]<>=|'\"`]+")

# (file relative to the repo, name): why that spelling is no file of an owner's folder
_OWN_RESULTS = "the benchmark's own results folder, no histoscan folder kind"
_SUGGESTED = "a file name suggested for `histoscan predict --out`"
_STATIC = "the web page in serve's own static folder, no output folder"
ALLOWED: dict[tuple[str, str], str] = {
    ("src/histoscan/cli/evaluate.py", "predictions.csv"): _SUGGESTED,
    ("src/histoscan/serve/app.py", "index.html"): _STATIC,
    ("benchmarks/compare_external.py", "summary.json"): _OWN_RESULTS,
    ("benchmarks/compare_recipes.py", "summary.json"): _OWN_RESULTS,
    ("benchmarks/ensemble_gain.py", "summary.json"): _OWN_RESULTS,
}


def declared_names() -> dict[str, set[Path]]:
    """Every file/folder name an owner declares -> the owner modules allowed to spell it."""
    names: dict[str, set[Path]] = defaultdict(set)
    for owner in OWNERS:
        module = Path(inspect.getfile(owner)).resolve()
        for key, value in vars(owner).items():
            if key.isupper() and isinstance(value, str):
                names[value].add(module)
    return dict(names)


def _components(text: str) -> Iterable[tuple[str, bool]]:
    """(path component, whether its token held a "/") for every token of `text`."""
    for token in _SEPARATORS.split(text):
        token = token.rstrip(".")
        if token:
            for part in token.split("/"):
                yield part, "/" in token


def _matches(part: str, name: str) -> bool:
    if name.endswith("-"):
        return part.startswith(name)
    if name.startswith("_"):
        return part.endswith(name)
    return part == name


def _help_positions(tree: ast.AST) -> dict[str, int]:
    """Functions that take a help text: name -> the help parameter's position (those defined in the module, and
    histoscan.ranges.opt, the option-field declaration every options module imports)."""
    own = {
        node.name: [a.arg for a in node.args.posonlyargs + node.args.args].index(key)
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        for key in HELP_KEYWORDS
        if key in [a.arg for a in node.args.posonlyargs + node.args.args]
    }
    return {"opt": list(inspect.signature(opt).parameters).index("help"), **own}


def _skipped_nodes(tree: ast.AST) -> set[int]:
    """ids of the constants that are docs or help text, and of everything inside a help value: a help=
    keyword, a {"help": ...} entry, or the help parameter of a function of the module passed by position."""
    skip: set[int] = set()
    helps = _help_positions(tree)
    texts: list[ast.AST] = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            texts.append(node.value)
        elif isinstance(node, ast.keyword) and node.arg in HELP_KEYWORDS:
            texts.append(node.value)
        elif isinstance(node, ast.Dict):
            texts += [v for k, v in zip(node.keys, node.values, strict=True)
                      if isinstance(k, ast.Constant) and k.value in HELP_KEYWORDS]  # fmt: skip
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in helps:
            at = helps[node.func.id]
            texts += node.args[at : at + 1]
    for text in texts:
        skip.update(id(n) for n in ast.walk(text))
    return skip


def _path_operands(tree: ast.AST) -> set[int]:
    """ids of the constants used as an operand of `/` (a path join)."""
    return {
        id(side)
        for node in ast.walk(tree)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)
        for side in (node.left, node.right)
        if isinstance(side, ast.Constant)
    }


def violations(path: Path, names: dict[str, set[Path]], root: Path = REPO) -> list[str]:
    """`file:line: 'name' in 'constant'` for every owner name spelled in `path` outside its owners."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    skip, joined = _skipped_nodes(tree), _path_operands(tree)
    here = path.resolve()
    rel = here.relative_to(root).as_posix() if here.is_relative_to(root) else str(path)
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) or id(node) in skip:
            continue
        for part, in_path in _components(node.value):
            for name, owners in names.items():
                if here in owners or (rel, name) in ALLOWED or not _matches(part, name):
                    continue
                if name.isalpha() and not (in_path and not node.value.startswith("/") or id(node) in joined):
                    continue  # a plain word, not used as a relative path (a URL route starts with "/")
                found.append(f"{rel}:{node.lineno}: {name!r} in {node.value!r}")
    return found


def scanned_files() -> list[Path]:
    return sorted(p for d in SCANNED if d.is_dir() for p in d.rglob("*.py"))


def test_owners_declare_the_folder_names() -> None:
    """The scan has something to look for: each owner declares its names, and the known ones are there."""
    names = declared_names()
    for owner in OWNERS:
        assert any(k.isupper() and isinstance(v, str) for k, v in vars(owner).items()), owner
    expected = {"config.yaml", "metrics.csv", "metrics.json", "report.html", "cv.json", "fold-", "study.json",
                "summary.json", "cohort.csv", ".done.json", "meta.json", "images.npy", "gradcam.npz"}  # fmt: skip
    assert expected <= set(names)


def test_no_folder_file_name_outside_its_owner() -> None:
    names = declared_names()
    files = scanned_files()
    assert len(files) > 50  # the scan reaches the package
    found = [v for p in files for v in violations(p, names)]
    assert not found, "file names spelled outside their folder's owner (ask the owner):\n" + "\n".join(found)


def test_allowed_exceptions_are_still_needed() -> None:
    """Every ALLOWED entry names a file that exists and spells that name (no stale exceptions)."""
    names = declared_names()
    for (rel, name), _why in ALLOWED.items():
        source = REPO / rel
        assert source.is_file(), rel
        assert name in names, name
        assert name in source.read_text(encoding="utf-8"), (rel, name)


def test_the_scan_finds_a_planted_violation(tmp_path: Path) -> None:
    """The check can fail: joins, f-strings, globs and messages are caught; docs and help text are not."""
    planted = tmp_path / "planted.py"
    planted.write_text(
        '"""Module doc naming cv.json and RUN/checkpoints/ freely."""\n'
        "from pathlib import Path\n"
        "def opt(default, help='', metadata=None): ...\n"
        "def f(out: Path, k: int, p) -> None:\n"
        '    """Writes OUT/summary.json."""\n'
        '    (out / "cv.json").write_text("{}")\n'  # 6: a join
        '    print(f"wrote {out}/summary.json")\n'  # 7: a message naming the path
        '    sorted(out.glob("fold-*"))\n'  # 8: a prefix in a glob
        '    run = out / f"fold-{k}"\n'  # 9: a prefix in an f-string
        '    ckpt = out / "checkpoints"\n'  # 10: a plain word joined as a path
        '    p.add_argument("--x", help="see OUT/cv.json")\n'  # help text: allowed
        '    opt(1, "kept in RUN/config.yaml", metadata={"help": "OUT/cv.json"})\n'  # help by position, in a dict
        '    print("explain", "checkpoints are saved", "/v1/explain")\n'  # words, a URL route: allowed
        '    x = "a.config.yaml.bak"\n'  # another file's name containing one: allowed
    )
    found = violations(planted, declared_names(), root=tmp_path)
    lines = sorted(int(v.split(":")[1]) for v in found)
    assert lines == [6, 7, 8, 9, 10], found
    assert "planted.py:6: 'cv.json' in 'cv.json'" in found


def test_an_owner_module_may_spell_its_own_names_only(tmp_path: Path) -> None:
    """A name is allowed in its owner's module, not in another owner's."""
    names = declared_names()
    run_module = next(iter(names["config.yaml"]))
    assert run_module.name == "run.py" and run_module.parent.name == "folders"
    assert not violations(run_module, names)
    foreign = {name: {tmp_path / "elsewhere.py"} for name in names}
    assert any("'config.yaml'" in v for v in violations(run_module, foreign))


def test_owners_read_back_what_they_write(tmp_path: Path) -> None:
    """The shared readers: an evaluation's predictions and metrics, a cv folder's fold runs in fold order, and
    a run's training curves with 1-based epochs (an old 0-based file renumbered; no epoch column: by row)."""
    import numpy as np

    from histoscan.folders import CvDir, EvalDir, RunDir

    ev = EvalDir(tmp_path / "eval")
    assert not ev.complete()
    ev.write_predictions(["a", "b"], ["p", ""], np.array([1, 0]), np.array([0.25, 0.5]), ["", "padded"])
    ev.write_metrics({"auc": 0.75, "tta": 1})
    assert ev.complete() and ev.read_metrics() == {"auc": 0.75, "tta": 1}
    assert ev.read_predictions() == [
        {"id": "a", "group": "p", "label": "1", "probability": "0.250000", "fitted": ""},
        {"id": "b", "group": "", "label": "0", "probability": "0.500000", "fitted": "padded"},
    ]

    cv = CvDir(tmp_path / "cv")
    for k in (10, 2, 0):
        RunDir(cv.fold_path(k)).config_path.parent.mkdir(parents=True)
        RunDir(cv.fold_path(k)).config_path.write_text("model: simple-cnn\n")
    cv.fold_path(3).mkdir()  # no run in it
    assert [p.name for p in cv.fold_runs()] == ["fold-0", "fold-2", "fold-10"]
    assert CvDir(cv.fold_path(0)).fold_runs() == []  # a run folder is no cv folder

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    assert run.metric_columns() is None
    run.metrics_path.write_text("epoch,val_auc\n0,0.6\n1,\n")
    cols = run.metric_columns()
    assert cols is not None
    np.testing.assert_array_equal(cols["epoch"], [1, 2])
    np.testing.assert_array_equal(cols["val_auc"], [0.6, np.nan])
    run.metrics_path.write_text("val_auc\n0.6\n0.7\n0.8\n")
    np.testing.assert_array_equal(run.metric_columns()["epoch"], [1, 2, 3])
    assert RunDir.is_last_checkpoint(run.last_ckpt) and not RunDir.is_last_checkpoint(run.best_ckpt)
