"""Stage ``ocr``: caption texts read by OCR, before ``consolidate``.

For every source in ``params.data.sources`` whose ``ocr`` is ``missing`` (memes without text) or
``all`` (every meme), the images are OCR'd and written to ``params.data.ocr_texts``
(``data/ocr/texts.parquet``), which consolidate reads for those sources. For SynthMeme sources a
seeded sample of ``ocr.cer_split`` (``ocr.cer_sample`` memes) is OCR'd too and scored against the
true captions: per meme in ``ocr.cer_output``, aggregated in ``reports/metrics/ocr.json``.
"""

from __future__ import annotations

from pathlib import Path

from memeops.data.ocr import run_ocr_stage, write_cer_rows, write_texts
from memeops.data.taxonomy import load_taxonomy
from memeops.stage_context import StageContext
from stages import run_stage


def main() -> int:
    ctx = StageContext()
    params = ctx.params
    result = run_ocr_stage(params.data, params.ocr, load_taxonomy(), Path.cwd())
    write_texts(result.texts, Path(params.data.ocr_texts))
    write_cer_rows(result.cer_rows, Path(params.ocr.cer_output))
    ctx.write_metrics("ocr", result.metrics, ensure_ascii=False)
    m = result.metrics
    cer = "; ".join(f"{name} CER raw {c['overall']['cer_raw']} / normalised {c['overall']['cer_normalized']} "
                    f"on {c['overall']['n']} {c['split']} memes" for name, c in m["cer"].items())
    print(f"ocr: {m['images']} images in {m['seconds']} s ({m['images_per_s']} images/s); "
          f"{len(result.texts)} texts for consolidate" + (f"; {cer}" if cer else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage("ocr", main))
