"""The EMPIAR deposition schema (package data, see ``data/PROVENANCE.md``) and validation against it.

The schema comes from EMPIAR's own depositor tool (``empiar-depositor``, Apache-2.0);
it is JSON Schema in draft 4 style, checked here with the ``jsonschema`` package.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

__all__ = ["SCHEMA_NAME", "SchemaReport", "load_schema", "check_deposition", "REQUIRED_FOR_A_PERSON"]

SCHEMA_NAME = "empiar_deposition.schema.json"
#: The required top-level fields only a person can fill (the schema's ``required`` less ``imagesets``).
REQUIRED_FOR_A_PERSON = (
    "title",
    "release_date",
    "experiment_type",
    "authors",
    "corresponding_author",
    "principal_investigator",
    "citation",
)


@cache
def load_schema() -> dict[str, Any]:
    """The packaged EMPIAR deposition schema."""
    text = resources.files("empcompress.deposition").joinpath("data").joinpath(SCHEMA_NAME).read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@dataclass(frozen=True)
class SchemaReport:
    """What the schema says of a deposition: valid, or which required fields are missing and what else."""

    valid: bool
    missing: tuple[str, ...]  # required fields absent (JSON paths, "title", "imagesets/0/name")
    problems: tuple[str, ...]  # every other violation, "path: message"


def _path(parts: Any) -> str:
    return "/".join(str(part) for part in parts)


def check_deposition(document: dict[str, Any]) -> SchemaReport:
    """Validate ``document`` against the EMPIAR deposition schema (draft 4)."""
    from jsonschema import Draft4Validator

    validator = Draft4Validator(load_schema())
    missing: list[str] = []
    problems: list[str] = []
    for error in sorted(validator.iter_errors(document), key=lambda e: _path(e.absolute_path)):
        where = _path(error.absolute_path)
        if error.validator == "required" and isinstance(error.validator_value, list):
            present = error.instance if isinstance(error.instance, dict) else {}
            for name in error.validator_value:
                if name not in present:
                    missing.append(f"{where}/{name}" if where else name)
        else:
            message = error.message if len(error.message) <= 300 else error.message[:300] + "..."
            problems.append(f"{where or '(top)'}: {message}")
    missing, problems = list(dict.fromkeys(missing)), list(dict.fromkeys(problems))
    return SchemaReport(not missing and not problems, tuple(missing), tuple(problems))
