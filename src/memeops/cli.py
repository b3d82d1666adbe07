"""The ``memeops`` command line (Typer). Pipeline work runs through ``dvc repro``; this CLI is for
looking at what the pipeline knows: the taxonomy, the parsed params, the runtime environment."""

from __future__ import annotations

from pathlib import Path

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


if __name__ == "__main__":
    app()
