"""Stage ``consolidate``: sources in params.data.sources -> data/consolidated/, reports/datasheet.*."""

from __future__ import annotations

from pathlib import Path

from memeops.data.consolidate import build_datasheet, consolidate, write_outputs
from memeops.data.taxonomy import load_taxonomy
from memeops.stage_context import StageContext
from stages import run_stage


def main() -> int:
    ctx = StageContext()
    params = ctx.params
    taxonomy = load_taxonomy()
    result = consolidate(params.data, taxonomy, Path.cwd())
    sheet = build_datasheet(result, taxonomy)
    write_outputs(result, sheet, Path(params.data.output_dir), ctx.reports)
    total = sheet["total"]
    print(f"consolidate: read {total['read']} = kept {total['kept']} + quarantined {total['quarantined']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage("consolidate", main))
