"""The unified 20-task taxonomy and the native -> task label mapping rules (``taxonomy.yaml``).

Loaders never hard-code a mapping: they call :meth:`Taxonomy.rule` and :meth:`Rule.apply`, so every
rule lives in the one data file and is tested one by one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, Literal

import yaml

TaskKind = Literal["single", "multi"]
GROUPS = ("harm", "targets", "intent", "affect")


@dataclass(frozen=True)
class Task:
    """One task: a closed label set, single-label or multi-label."""

    name: str
    group: str
    kind: TaskKind
    labels: tuple[str, ...]

    @property
    def is_multi(self) -> bool:
        return self.kind == "multi"

    @property
    def is_binary(self) -> bool:
        return self.kind == "single" and len(self.labels) == 2


class MappingError(ValueError):
    """A native value that no rule maps; carries what a quarantine entry needs."""

    def __init__(self, rule_id: str, task: str, field: str, value: Any, expected: list[str]):
        self.rule_id, self.task, self.field, self.value = rule_id, task, field, value
        shown = ", ".join(repr(e) for e in expected[:12])
        super().__init__(
            f"rule {rule_id}: value {value!r} of field {field!r} is not mapped to task {task!r} "
            f"(expected one of {shown})"
        )


def normalise_native(value: Any) -> str:
    """Compare native values as stripped strings; 1.0 -> '1', NaN/None -> ''."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if value.is_integer():
            return str(int(value))
    return str(value).strip()


@dataclass(frozen=True)
class Rule:
    """A mapping from one native field to one task."""

    id: str
    task: str
    field: str
    mapping: dict[str, str | None] = field(default_factory=dict)
    identity: bool = False

    def apply(self, value: Any, task: Task) -> str | None:
        """Map one native value to a label of ``task`` (None = no label); raise MappingError."""
        key = normalise_native(value)
        if self.identity:
            label = key.lower().replace(" ", "_").replace("-", "_")
            if label in task.labels:
                return label
            if key == "":
                return None
            raise MappingError(self.id, task.name, self.field, value, list(task.labels))
        if key in self.mapping:
            return self.mapping[key]
        raise MappingError(self.id, task.name, self.field, value, list(self.mapping))

    def apply_multi(self, values: Any, task: Task) -> list[str]:
        """Map a list of native values to a sorted label set; null-mapped elements add nothing."""
        if isinstance(values, str):
            values = [values]
        if not isinstance(values, (list, tuple)):
            raise MappingError(self.id, task.name, self.field, values, ["a list of labels"])
        out = {label for v in values if (label := self.apply(v, task)) is not None}
        return sorted(out, key=task.labels.index)


@dataclass(frozen=True)
class FormatRules:
    format: str
    on_unmapped: Literal["quarantine", "missing"]
    rules: tuple[Rule, ...]


class Taxonomy:
    """Tasks and per-format rules, as loaded from ``taxonomy.yaml``."""

    def __init__(self, raw: dict[str, Any]):
        self.tasks: dict[str, Task] = {}
        for name, spec in raw["tasks"].items():
            labels = tuple(str(x) for x in spec["labels"])
            if spec["group"] not in GROUPS or spec["kind"] not in ("single", "multi"):
                raise ValueError(f"taxonomy task {name}: bad group or kind")
            self.tasks[name] = Task(name, spec["group"], spec["kind"], labels)
        self.formats: dict[str, FormatRules] = {}
        for fmt, spec in raw["formats"].items():
            rules = []
            for r in spec["rules"]:
                mapping = {normalise_native(k): (None if v is None else str(v)) for k, v in (r.get("map") or {}).items()}
                rule = Rule(r["id"], r["task"], r["field"], mapping, bool(r.get("identity", False)))
                if rule.task != "*":
                    task = self.tasks[rule.task]
                    bad = [v for v in mapping.values() if v is not None and v not in task.labels]
                    if bad:
                        raise ValueError(f"taxonomy rule {rule.id}: {bad} not in labels of {task.name}")
                rules.append(rule)
            self.formats[fmt] = FormatRules(fmt, spec["on_unmapped"], tuple(rules))

    def task(self, name: str) -> Task:
        try:
            return self.tasks[name]
        except KeyError:
            raise KeyError(f"unknown task {name!r}; known: {', '.join(self.tasks)}") from None

    def rule(self, fmt: str, rule_id: str) -> Rule:
        for rule in self.formats[fmt].rules:
            if rule.id == rule_id:
                return rule
        raise KeyError(f"format {fmt!r} has no rule {rule_id!r}")

    def rules_for(self, fmt: str) -> tuple[Rule, ...]:
        return self.formats[fmt].rules

    def on_unmapped(self, fmt: str) -> str:
        return self.formats[fmt].on_unmapped

    @property
    def task_names(self) -> list[str]:
        return list(self.tasks)

    def is_valid(self, task_name: str, value: Any) -> bool:
        """True when ``value`` is a well-formed label of the task (None counts as missing, valid)."""
        task = self.task(task_name)
        if value is None:
            return True
        if task.is_multi:
            return isinstance(value, (list, tuple)) and all(v in task.labels for v in value)
        return value in task.labels


@lru_cache(maxsize=1)
def load_taxonomy() -> Taxonomy:
    """The project's taxonomy (cached; the file ships inside the package)."""
    text = resources.files("memeops.data").joinpath("taxonomy.yaml").read_text(encoding="utf-8")
    return Taxonomy(yaml.safe_load(text))


def label_column(task: str) -> str:
    """Column name of a task's mapped label in the consolidated table."""
    return f"label_{task}"
