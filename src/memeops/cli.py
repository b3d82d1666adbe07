"""The ``memeops`` command line (Typer). Pipeline work runs through ``dvc repro``; this CLI is for
looking at what the pipeline knows (the taxonomy, the parsed params, the runtime environment),
predicting with a packed model, the deliberate step of promoting a challenger to champion, and the
check that a rebuild reproduces the committed headline numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


@app.command()
def taxonomy() -> None:
    """List the 20 tasks: group, kind and labels."""
    from memeops.data.taxonomy import load_taxonomy

    for task in load_taxonomy().tasks.values():
        typer.echo(f"{task.group:8s} {task.name:20s} {task.kind:6s} {', '.join(task.labels)}")


@app.command()
def params(path: Path = typer.Option(Path("params.yaml"), help="params file to check")) -> None:
    """Validate params.yaml and print it as the typed config the stages receive."""
    from memeops.config import ConfigError, load_params

    try:
        typer.echo(load_params(path).model_dump_json(indent=2, by_alias=True))
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None


@app.command()
def env() -> None:
    """Print the offline switches and tool-state locations as shell exports."""
    from memeops.runtime import shell_exports

    typer.echo(shell_exports())


PREDICT_HELP = (
    "Predict every task for raw memes (image + caption) with a packed model.\n\n"
    "MODEL is a registered model URI (models:/memeops-gatedclip@challenger), any MLflow model URI "
    "(runs:/<run_id>/model), or a local model folder written by save_model_dir "
    "(or an MLflow model folder).\n\n"
    "Captions: give --text once to use it for every image, or exactly once per image, in the same order; "
    "without --text the memes are treated as having no caption.\n\n"
    "Prints one table per image (task, label, probability; a multi-label task shows its labels joined by "
    "'|' and the probability of that exact label set), or with --json a list of "
    "{image, text, predictions: {task: {label, probability, p_<label>...}}}.\n\n"
    "Errors are printed on one line and exit with code 2."
)


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {' '.join(str(message).split())[:500]}", err=True)
    raise typer.Exit(2)


def _prediction_records(frame: Any) -> list[dict[str, dict[str, Any]]]:
    """Output rows -> ``{task: {"label", "probability", "p_<label>"..., and for the VLM "explanation",
    "valid"}}``; the tasks are the
    columns that have a ``<task>_prob`` twin, so any packed model's output table works."""
    tasks = [c for c in frame.columns if f"{c}_prob" in frame.columns]
    records = []
    for _, row in frame.iterrows():
        per_task: dict[str, dict[str, Any]] = {}
        for task in tasks:
            entry: dict[str, Any] = {"label": row[task], "probability": float(row[f"{task}_prob"])}
            prefix = f"{task}_p_"
            extra = {f"p_{c[len(prefix) :]}": float(row[c]) for c in frame.columns if c.startswith(prefix)}
            entry.update(extra)
            for field in ("explanation", "valid"):  # the VLM's generated explanation and its parse
                if f"{task}_{field}" in frame.columns:
                    value = row[f"{task}_{field}"]
                    entry[field] = bool(value) if field == "valid" else str(value)
            per_task[task] = entry
        records.append(per_task)
    return records


@app.command(help=PREDICT_HELP)
def predict(
    images: Annotated[list[str], typer.Argument(metavar="IMAGE", help="meme image files (png, jpg, ...)")],
    model: Annotated[
        str, typer.Option("--model", "-m", help="models:/NAME@ALIAS, runs:/ID/model or a local model folder")
    ],
    text: Annotated[
        list[str] | None, typer.Option("--text", "-t", help="caption: once for all images, or once per image")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of tables")] = False,
    device: Annotated[str, typer.Option(help="torch device for encoder and head: cpu, cuda, ...")] = "cpu",
) -> None:
    import json
    import os

    texts = list(text or [])
    if len(texts) not in (0, 1, len(images)):
        _fail(f"got {len(texts)} --text for {len(images)} images: give one --text for all, or one per image")
    texts = texts * len(images) if len(texts) == 1 else texts or [""] * len(images)
    for image in images:
        if not Path(image).is_file():
            _fail(f"image file not found: {image}")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import pandas as pd

    from memeops.serving.predictor import load_predictor

    user_errors: tuple[type[BaseException], ...] = (ValueError, TypeError, KeyError, OSError)
    try:
        import logging

        from mlflow.exceptions import MlflowException

        user_errors += (MlflowException,)
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # no INFO chatter around the output
    except ImportError:  # pragma: no cover - mlflow is a dependency; local folders work without it
        pass
    try:
        predictor = load_predictor(model, device=device)
        frame = pd.DataFrame({"image": [str(Path(p).resolve()) for p in images], "text": texts})
        records = _prediction_records(predictor.predict(frame))
    except user_errors as exc:
        from memeops.tracking.registry import explain_missing_alias

        _fail(explain_missing_alias(model) or str(exc) or type(exc).__name__)
    if as_json:
        rows = zip(images, texts, records, strict=True)
        out = [{"image": i, "text": t, "predictions": r} for i, t, r in rows]
        typer.echo(json.dumps(out, indent=2, ensure_ascii=False))
        return
    for image, caption, record in zip(images, texts, records, strict=True):
        typer.echo(f"{image}  text: {caption!r}")
        width = max([len("task"), *map(len, record)])
        labels = {task: entry["label"] or "(none)" for task, entry in record.items()}
        lwidth = max([len("label"), *map(len, labels.values())])
        typer.echo(f"  {'task':<{width}}  {'label':<{lwidth}}  probability")
        for task, entry in record.items():
            typer.echo(f"  {task:<{width}}  {labels[task]:<{lwidth}}  {entry['probability']:.3f}")


PROMOTE_HELP = (
    "Promote memeops-VARIANT@challenger to @champion when it beats the champion (guarded).\n\n"
    "The challenger becomes champion only when its training data passed validation, it was scored on the "
    "same evaluation data as the champion, and its mean primary metric (AUROC for binary tasks, macro-F1 "
    "otherwise) on params promotion.split (default val) beats the champion's by promotion.margin with a "
    "paired bootstrap p-value below 1 - promotion.confidence. The first model of a variant becomes "
    "champion directly. The decision (promoted / kept / refused), its reason, both metrics, the p-value, "
    "the git commit and the time are tagged on the challenger's model version (memeops.promotion.*).\n\n"
    "Prints the decision on one line (--json: all of it). Exit code 0 for promoted, kept, refused and "
    "--dry-run; errors (unknown variant, no challenger, bad params) print one line and exit with code 2."
)


@app.command("serve-uri")
def serve_uri(
    variant: Annotated[str, typer.Argument(help="the variant: registered model memeops-<variant>")],
    alias: Annotated[str, typer.Option(help="the alias to serve")] = "champion",
) -> None:
    """Print the models:/ URI `make serve` serves: memeops-VARIANT@ALIAS, or @challenger (said on
    stderr) while nothing is champion yet; one-line error with what to run when neither exists."""
    from memeops.tracking.registry import servable_uri

    try:
        uri, note = servable_uri(variant, alias)
    except LookupError as exc:
        _fail(str(exc))
    if note:
        typer.echo(f"note: {note}", err=True)
    typer.echo(uri)


@app.command(help=PROMOTE_HELP)
def promote(
    variant: Annotated[str, typer.Argument(help="the variant: registered model memeops-<variant>")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the decision, change nothing")] = False,
    params_path: Annotated[
        Path | None,
        typer.Option("--params", help="params file (section promotion); default ./params.yaml if present"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the decision as JSON")] = False,
) -> None:
    import json
    import logging
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow.exceptions import MlflowException

    from memeops.config import ConfigError, load_params
    from memeops.tracking.promotion import PromotionConfig, promote_variant

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    try:
        if params_path is None and not Path("params.yaml").is_file():
            cfg = PromotionConfig()  # outside a project checkout: the documented defaults
        else:
            cfg = load_params(params_path or Path("params.yaml")).section("promotion", PromotionConfig)
        decision = promote_variant(variant, cfg, dry_run=dry_run)
    except (ConfigError, ValueError, OSError, MlflowException) as exc:  # PromotionError is a ValueError
        _fail(str(exc) or type(exc).__name__)
    typer.echo(json.dumps(decision.to_dict(), indent=2) if as_json else decision.summary())


VERIFY_HELP = (
    "Check a rebuilt reports/ against the committed one: every headline number (each row of "
    "reports/comparison.csv and reports/ablations.csv) must lie inside its committed 95% interval.\n\n"
    "--baseline is a git revision (read with git show REV:reports/<file>) or a reports directory; "
    "--rebuilt is a reports directory. Prints every compared number (committed mean [interval], rebuilt, "
    "inside) and a summary line. Exit code 0 when all are inside, 1 when any is outside or missing on one "
    "side (named on the last line), 2 when a file cannot be read. `make verify` rebuilds the pipeline in "
    "a temp copy first (docs/reproducibility.md)."
)


@app.command(help=VERIFY_HELP)
def verify(
    baseline: Annotated[str, typer.Option(help="git revision or reports directory (committed)")] = "HEAD",
    rebuilt: Annotated[Path, typer.Option(help="reports directory of the rebuild")] = Path("reports"),
    repo: Annotated[Path, typer.Option(help="git repository of a revision baseline")] = Path("."),
) -> None:
    from memeops.evaluation.rebuild import VerifyError, render
    from memeops.evaluation.rebuild import verify as verify_reports

    try:
        checks = verify_reports(baseline, rebuilt, repo)
    except (VerifyError, OSError) as exc:
        _fail(str(exc))
    typer.echo(render(checks))
    if not all(c.ok for c in checks):
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
