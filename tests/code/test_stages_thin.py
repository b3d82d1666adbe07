"""Every module in ``stages/`` stays an adapter: params in, one library call, outputs out.

The work lives in ``src/memeops`` (stage :mod:`memeops.stage_context` gives every stage the paths,
configs and helpers it shares); a stage that grows past :data:`MAX_CODE_LINES` lines of code is
doing work that belongs in the library. Docstrings, comments and blank lines do not count.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from memeops.stage_context import StageContext

REPO = Path(__file__).resolve().parents[2]
STAGES = sorted((REPO / "stages").glob("*.py"))
MAX_CODE_LINES = 45


def code_lines(source: str) -> int:
    """Lines of ``source`` that are neither blank, nor only a comment, nor part of a docstring
    (module, class or function)."""
    tree = ast.parse(source)
    docstrings: set[int] = set()
    for node in [tree, *ast.walk(tree)]:
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                docstrings.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    return sum(1 for number, line in enumerate(source.splitlines(), start=1)
               if line.strip() and not line.strip().startswith("#") and number not in docstrings)  # fmt: skip


def test_code_lines_drop_docstrings_comments_and_blank_lines() -> None:
    source = '"""Module doc.\n\nTwo paragraphs."""\n\nimport os  # why\n\n# a comment\n\n\ndef f() -> int:\n    """Doc."""\n    return 1\n'
    assert code_lines(source) == 3  # import, def, return
    assert code_lines("x = '''not a docstring\n'''\n") == 2


def test_the_stages_are_found() -> None:
    names = {p.stem for p in STAGES}
    assert {"features", "ablate", "evaluate", "train", "tune", "report"} <= names


@pytest.mark.parametrize("path", STAGES, ids=[p.stem for p in STAGES])
def test_stage_is_thin(path: Path) -> None:
    n = code_lines(path.read_text(encoding="utf-8"))
    assert n <= MAX_CODE_LINES, (f"stages/{path.name}: {n} lines of code (max {MAX_CODE_LINES}); move the work into "
                                 "src/memeops and keep the stage an adapter (see stages/features.py)")  # fmt: skip


def test_the_stage_context_imports_no_torch() -> None:
    """Stages that only write reports must not pay for torch because of the shared context."""
    code = "import sys, memeops.stage_context; print(sorted({'torch', 'mlflow'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_the_context_reads_params_once_and_only_when_asked(tmp_path: Path) -> None:
    ctx = StageContext(params_path=tmp_path / "params.yaml", reports=tmp_path / "reports")
    assert ctx.validation_report == tmp_path / "reports" / "validation.json"  # no params needed
    (tmp_path / "params.yaml").write_text(
        "data:\n  output_dir: out/memes\n  sources: [{name: s, format: synthmeme, path: data/s}]\n"
        "train:\n  experiment: exp-x\n  tasks: [hateful]\n  variants: {}\n", encoding="utf-8")  # fmt: skip
    assert ctx.memes_path == Path("out/memes/memes.parquet") and ctx.experiment == "exp-x"
    assert ctx.tasks == ["hateful"] and ctx.feature_dir == Path("data/features")  # the features default
    (tmp_path / "params.yaml").write_text("not: [valid", encoding="utf-8")
    assert ctx.params.data.output_dir == "out/memes"  # read once: the file changing later is not seen
    with pytest.raises(FileNotFoundError, match="run stage consolidate first"):
        ctx.data_digest()  # no meme table: one line, not a hash of nothing


def test_write_metrics_writes_sorted_indented_json(tmp_path: Path) -> None:
    ctx = StageContext(reports=tmp_path / "reports")
    path = ctx.write_metrics("x", {"b": 1, "a": "é"}, ensure_ascii=False)
    assert path == tmp_path / "reports" / "metrics" / "x.json"
    assert path.read_text(encoding="utf-8") == '{\n  "a": "é",\n  "b": 1\n}\n'
    assert json.loads(ctx.write_metrics("y", {"b": 1, "a": 2}, sort_keys=False).read_text()) == {"b": 1, "a": 2}
    assert list(json.loads((tmp_path / "reports" / "metrics" / "y.json").read_text())) == ["b", "a"]


def test_every_code_dep_in_dvc_yaml_exists() -> None:
    """A dep on a moved or deleted module makes ``dvc repro`` fail in every fresh copy (CI did once)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    missing = sorted(f"{name}: {dep}" for name, stage in stages.items() for dep in stage.get("deps", [])
                     if isinstance(dep, str) and dep.startswith(("src/", "stages/")) and not (REPO / dep).exists())  # fmt: skip
    assert not missing, f"dvc.yaml deps that do not exist: {missing}"


@pytest.mark.parametrize("args", [["nope"], []])
def test_train_stage_names_a_bad_variant_in_one_line(args: list[str]) -> None:
    """An unknown (or missing) variant is one line on stderr and exit code 2, before anything trains."""
    proc = subprocess.run([sys.executable, "-m", "stages.train", *args], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stage train: usage:") and "train.variants has:" in lines[0], lines
    assert ("'nope'" if args else "none given") in lines[0]
