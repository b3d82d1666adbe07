"""The rebuild check (memeops.evaluation.rebuild, `memeops verify`): hand-written headline CSVs,
directories and a git-revision baseline in a temp repository."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from memeops.cli import app
from memeops.evaluation.rebuild import (
    HEADLINE_FILES,
    Interval,
    VerifyError,
    compare,
    is_inside,
    parse_headline,
    render,
    verify,
)

NAN = math.nan
COMPARISON, ABLATIONS = HEADLINE_FILES


def comparison_rows(**means: float) -> list[dict]:
    """Long comparison rows, interval = mean ± 0.05; ``means`` keys ``variant__task__metric``."""
    rows = []
    for key, mean in means.items():
        variant, task, metric = key.split("__")
        rows.append({"variant": variant, "task": task, "metric": metric, "n_seeds": 3, "mean": mean, "std": 0.01,
                     "ci_low": mean - 0.05, "ci_high": mean + 0.05, "best": "concat", "delta_vs_best": 0.0,
                     "p_value": NAN, "p_holm": NAN, "significant": False})  # fmt: skip
    return rows


def ablation_rows(**means: float) -> list[dict]:
    """Ablation rows as stage ablate writes them (per-metric columns after the headline ones)."""
    rows = []
    for key, mean in means.items():
        group, arm = key.split("__")
        rows.append({"group": group, "arm": arm, "description": "an arm, with a comma", "n_seeds": 3, "mean": mean,
                     "std": 0.02, "ci_low": mean - 0.1, "ci_high": mean + 0.1, "delta": NAN, "p_value": NAN,
                     "p_holm": NAN, "significant": False, "hateful/auroc": 0.5})  # fmt: skip
    return rows


def write_reports(folder: Path, comparison: list[dict] | None, ablations: list[dict] | None) -> Path:
    """A reports folder with the given headline tables (None: the file is absent)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("comparison.csv", comparison), ("ablations.csv", ablations)):
        if rows is not None:
            pd.DataFrame(rows).to_csv(folder / name, index=False)
    return folder


BASE = dict(gatedclip__hateful__macro_f1=0.60, gatedclip__mean__macro_f1=0.55, concat__hateful__auroc=0.70)
ARMS = dict(mgmcf__full=0.61, mgmcf__no_object_level=0.57)


# --------------------------------------------------------------------------- the rule


def test_inside_outside_and_the_float_tolerance() -> None:
    ci = Interval(0.5, 0.4, 0.6)
    assert is_inside(ci, 0.5) and is_inside(ci, 0.4) and is_inside(ci, 0.6)
    assert is_inside(ci, 0.6 + 5e-10) and not is_inside(ci, 0.6 + 1e-6)
    assert not is_inside(ci, 0.39) and not is_inside(ci, 0.61)
    assert is_inside(ci, 0.6 + 1e-6, tolerance=1e-5)


def test_nan_is_consistent_with_nan_only_and_a_missing_interval_is_a_point() -> None:
    assert is_inside(Interval(NAN, NAN, NAN), NAN)
    assert not is_inside(Interval(NAN, NAN, NAN), 0.5)
    assert not is_inside(Interval(0.5, 0.4, 0.6), NAN)
    one_seed = Interval(0.5, NAN, NAN)
    assert is_inside(one_seed, 0.5) and not is_inside(one_seed, 0.51)


def test_compare_names_outside_and_missing_rows_on_either_side() -> None:
    committed = {"a": Interval(0.5, 0.4, 0.6), "b": Interval(0.5, 0.4, 0.6), "gone": Interval(0.1, 0.0, 0.2)}
    rebuilt = {"a": Interval(0.55, 0.5, 0.6), "b": Interval(0.7, 0.6, 0.8), "new": Interval(0.3, 0.2, 0.4)}
    checks = {c.name: c for c in compare(committed, rebuilt)}
    assert [c for c in checks] == ["a", "b", "gone", "new"]
    assert checks["a"].ok and checks["a"].rebuilt == 0.55
    assert checks["b"].status == "outside" and not checks["b"].ok
    assert checks["gone"].status == "missing in rebuilt" and checks["gone"].rebuilt is None
    assert checks["new"].status == "missing in committed" and checks["new"].committed is None


# --------------------------------------------------------------------------- reading the CSVs


def test_parse_comparison_and_ablations_rows(tmp_path: Path) -> None:
    folder = write_reports(tmp_path, comparison_rows(**BASE), ablation_rows(**ARMS))
    comp = parse_headline((folder / "comparison.csv").read_text(), COMPARISON, "c")
    assert list(comp) == ["gatedclip/hateful/macro_f1", "gatedclip/mean/macro_f1", "concat/hateful/auroc"]
    assert comp["concat/hateful/auroc"] == Interval(0.70, pytest.approx(0.65), pytest.approx(0.75))
    abl = parse_headline((folder / "ablations.csv").read_text(), ABLATIONS, "a")
    assert list(abl) == ["ablate/mgmcf/full", "ablate/mgmcf/no_object_level"]
    assert abl["ablate/mgmcf/full"].mean == 0.61


def test_empty_cells_read_as_nan_and_keys_stay_text() -> None:
    text = ("variant,task,metric,n_seeds,mean,std,ci_low,ci_high\n"
            "vlm,NA,macro_f1,1,,,,\nvlm,null,auroc,1,nan,,0.1,0.2\n")
    rows = parse_headline(text, COMPARISON, "c")
    assert set(rows) == {"vlm/NA/macro_f1", "vlm/null/auroc"}
    assert all(math.isnan(v) for v in vars(rows["vlm/NA/macro_f1"]).values())
    assert math.isnan(rows["vlm/null/auroc"].mean) and rows["vlm/null/auroc"].ci_high == 0.2


@pytest.mark.parametrize(("text", "message"), [
    ("task,gatedclip,concat\nhateful,0.4,0.5\n", r"wide.csv: no column variant, metric, mean, ci_low, ci_high"),
    ("variant,task,metric,mean,ci_low,ci_high\na,b,c,high,0,1\n", "not a number"),
    ("variant,task,metric,mean,ci_low,ci_high\na,b,c,0.5,0,1\na,b,c,0.6,0,1\n", "rows named twice: a/b/c"),
])  # fmt: skip
def test_unreadable_tables_are_one_line_errors(text: str, message: str) -> None:
    with pytest.raises(VerifyError, match=message) as info:
        parse_headline(text, COMPARISON, "wide.csv")
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- whole reports folders


def test_directories_all_inside(tmp_path: Path) -> None:
    base = write_reports(tmp_path / "base", comparison_rows(**BASE), ablation_rows(**ARMS))
    moved = {k: v + 0.04 for k, v in BASE.items()}  # inside the ±0.05 intervals
    lowered = {k: v - 0.09 for k, v in ARMS.items()}  # inside the ±0.1 intervals
    new = write_reports(tmp_path / "new", comparison_rows(**moved), ablation_rows(**lowered))
    checks = verify(base, new)
    assert len(checks) == 5 and all(c.ok for c in checks)
    text = render(checks)
    assert text.splitlines()[-1] == "5 of 5 headline numbers inside the committed intervals; 0 outside, 0 missing"
    assert "gatedclip/hateful/macro_f1" in text and "0.6000 [0.5500, 0.6500]" in text and "0.6400" in text


def test_directories_outside_and_missing_rows_are_named(tmp_path: Path) -> None:
    base = write_reports(tmp_path / "base", comparison_rows(**BASE), ablation_rows(**ARMS))
    rebuilt = dict(BASE, gatedclip__hateful__macro_f1=0.53)  # 0.07 below: outside
    del rebuilt["concat__hateful__auroc"]
    rebuilt["vlm__hateful__auroc"] = 0.5
    new = write_reports(tmp_path / "new", comparison_rows(**rebuilt), ablation_rows(mgmcf__full=0.72))
    checks = {c.name: c.status for c in verify(base, new)}
    assert checks == {"gatedclip/hateful/macro_f1": "outside", "gatedclip/mean/macro_f1": "inside",
                      "concat/hateful/auroc": "missing in rebuilt", "vlm/hateful/auroc": "missing in committed",
                      "ablate/mgmcf/full": "outside", "ablate/mgmcf/no_object_level": "missing in rebuilt"}  # fmt: skip
    last = render(verify(base, new)).splitlines()
    assert last[-2] == "1 of 6 headline numbers inside the committed intervals; 2 outside, 3 missing"
    assert last[-1] == ("not reproduced: gatedclip/hateful/macro_f1, concat/hateful/auroc, vlm/hateful/auroc, "
                        "ablate/mgmcf/full, ablate/mgmcf/no_object_level")  # fmt: skip


def test_a_headline_file_absent_on_one_or_both_sides_fails(tmp_path: Path) -> None:
    base = write_reports(tmp_path / "base", comparison_rows(**BASE), None)
    new = write_reports(tmp_path / "new", None, None)
    checks = verify(base, new)
    assert [c.status for c in checks] == ["missing in rebuilt"] * 3 + ["missing on both sides"]
    assert checks[-1].name == "ablations.csv"
    with pytest.raises(VerifyError, match="not a directory"):
        verify(base, tmp_path / "nowhere")


# --------------------------------------------------------------------------- a git revision as baseline


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository whose first commit holds reports/ with BASE and ARMS, the second moves one number."""
    root = tmp_path / "repo"
    write_reports(root / "reports", comparison_rows(**BASE), ablation_rows(**ARMS))
    _git(root.parent, "init", "-q", str(root))
    for key, value in (("user.email", "t@example.com"), ("user.name", "t"), ("commit.gpgsign", "false")):
        _git(root, "config", key, value)
    _git(root, "add", "reports")
    _git(root, "commit", "-q", "-m", "first")
    moved = comparison_rows(**dict(BASE, gatedclip__mean__macro_f1=0.9))
    write_reports(root / "reports", moved, ablation_rows(**ARMS))
    _git(root, "commit", "-q", "-am", "second")
    return root


def test_git_revision_baseline(repo: Path, tmp_path: Path) -> None:
    rebuilt = write_reports(tmp_path / "rebuilt", comparison_rows(**BASE), ablation_rows(**ARMS))
    assert all(c.ok for c in verify("HEAD~1", rebuilt, repo))
    at_head = {c.name: c for c in verify("HEAD", rebuilt, repo)}
    assert at_head["gatedclip/mean/macro_f1"].status == "outside"
    assert at_head["gatedclip/mean/macro_f1"].committed == Interval(0.9, pytest.approx(0.85), pytest.approx(0.95))
    assert sum(not c.ok for c in at_head.values()) == 1
    with pytest.raises(VerifyError, match="neither a directory nor a git revision"):
        verify("no-such-rev", rebuilt, repo)


def test_cli_exit_codes_and_output(repo: Path, tmp_path: Path) -> None:
    rebuilt = write_reports(tmp_path / "rebuilt", comparison_rows(**BASE), ablation_rows(**ARMS))
    runner = CliRunner()
    ok = runner.invoke(app, ["verify", "--baseline", "HEAD~1", "--rebuilt", str(rebuilt), "--repo", str(repo)])
    assert ok.exit_code == 0 and "5 of 5 headline numbers inside" in ok.output
    bad = runner.invoke(app, ["verify", "--rebuilt", str(rebuilt), "--repo", str(repo)])  # baseline HEAD
    assert bad.exit_code == 1 and bad.output.splitlines()[-1] == "not reproduced: gatedclip/mean/macro_f1"
    broken = write_reports(tmp_path / "broken", None, None)
    (broken / "comparison.csv").write_text("task,gatedclip\nhateful,0.4\n")
    err = runner.invoke(app, ["verify", "--baseline", str(rebuilt), "--rebuilt", str(broken)])
    assert err.exit_code == 2 and "no column variant" in err.output
