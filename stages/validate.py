"""Stage ``validate``: check ``{data.output_dir}/memes.parquet`` with the Great Expectations suite.

Run from the project root as ``python -m stages.validate``. Writes ``reports/validation.json`` and
``reports/validation.md``. Exit status: 0 passed, 1 a blocking expectation failed (the reason on
stderr, one line), 2 unusable params or missing input.
"""

from __future__ import annotations

import sys

from memeops.data.taxonomy import load_taxonomy
from memeops.data.validate import validate_memes
from memeops.data.validation_report import failure_message
from memeops.stage_context import StageContext
from stages import run_stage


def main() -> int:
    ctx = StageContext()
    params, source = ctx.params, ctx.memes_path
    if not source.is_file():
        raise FileNotFoundError(f"{source}: consolidated table not found (run stage consolidate first)")
    report = validate_memes(ctx.memes(), params.validate_, params.data.leakage.policy, load_taxonomy())
    ctx.reports.mkdir(parents=True, exist_ok=True)
    ctx.validation_report.write_text(report.to_json() + "\n", encoding="utf-8")
    (ctx.reports / "validation.md").write_text(report.to_markdown(), encoding="utf-8")
    if not report.success:
        print(failure_message(report), file=sys.stderr)
        return 1
    print(f"{report.headline()} ({source}; report in {ctx.reports / 'validation.md'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage("validate", main))
