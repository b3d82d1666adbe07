"""Stage ``synth``: generate SynthMeme from ``params.yaml``'s ``synth`` section.

Thin on purpose: the work lives in :mod:`memeops.data.synth`. Writes ``synth.output_dir`` and the
metrics file ``reports/synthmeme.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from memeops.data.synth.generate import generate
from memeops.stage_context import StageContext
from stages import run_stage


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ctx = StageContext(params_path=Path(argv[0] if argv else "params.yaml"))
    params = ctx.params
    report = generate(params.synth, report_path=ctx.reports / "synthmeme.json")
    print(f"synth: {report['n_memes']} memes {report['n_per_split']} in {report['generation_seconds']} s "
          f"({report['memes_per_second']} memes/s) -> {params.synth.output_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage("synth", main))
