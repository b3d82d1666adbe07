"""Prefect flow: guarded promotion of ``memeops-<variant>@challenger`` to ``@champion``.

``python -m flows.promote <variant> [--dry-run] [--params params.yaml]`` runs the flow once
(Prefect's ephemeral API unless ``PREFECT_API_URL`` points at a server); the rule, the tags and the
lock are :func:`memeops.tracking.promotion.promote_variant`'s (see ``docs/promotion.md``). The
flow returns the decision as a dict; it fails only on real errors (unknown variant, no
challenger), never for a challenger that is kept or refused.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import memeops  # noqa: F401  - offline switches and in-project state (PREFECT_HOME) before prefect

# isort: split
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE


@task(name="promote-variant", cache_policy=NO_CACHE, retries=0)
def promote_task(variant: str, dry_run: bool, params_path: str | None) -> dict[str, Any]:
    """Load ``params.promotion`` and decide / apply the promotion (no caching: it reads the registry)."""
    import os

    from memeops.config import load_params
    from memeops.tracking.promotion import PromotionConfig, promote_variant

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    path = Path(params_path) if params_path else Path("params.yaml")
    if params_path is None and not path.is_file():
        cfg = PromotionConfig()
    else:
        cfg = load_params(path).section("promotion", PromotionConfig)
    decision = promote_variant(variant, cfg, dry_run=dry_run)
    get_run_logger().info(decision.summary())
    return decision.to_dict()


@flow(name="memeops-promote", log_prints=True)
def promote_flow(variant: str, dry_run: bool = False, params_path: str | None = None) -> dict[str, Any]:
    """Promote ``memeops-<variant>`` if the challenger earns it; returns the decision."""
    return promote_task(variant, dry_run, params_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.promote", description=__doc__.splitlines()[0])
    parser.add_argument("variant")
    parser.add_argument("--dry-run", action="store_true", help="print the decision, change nothing")
    parser.add_argument("--params", default=None, help="params file (default ./params.yaml)")
    args = parser.parse_args(argv)
    from mlflow.exceptions import MlflowException

    try:
        decision = promote_flow(args.variant, dry_run=args.dry_run, params_path=args.params)
    except (ValueError, OSError, MlflowException) as exc:  # PromotionError, ConfigError: one line, exit 2
        print(f"error: {' '.join(str(exc).split())[:500]}", file=sys.stderr)
        return 2
    print(f"{'dry run: ' if decision['dry_run'] else ''}{decision['decision']}: {decision['model_name']} "
          f"v{decision['challenger_version']}; {decision['reason']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
