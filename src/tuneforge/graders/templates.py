"""OpenAI grader templates: ``{{ sample.output_text }}``, ``{{ item.field }}``, ``{{ item.a.b }}``."""

from __future__ import annotations

import json
import re
from typing import Any

from tuneforge.graders.base import Sample
from tuneforge.graders.builtin import parse_json_answer

TEMPLATE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)((?:\.[A-Za-z0-9_]+)*)\s*\}\}")
ROOTS = ("sample", "item")


class TemplateError(ValueError):
    """A template names something the sample or item does not have."""


def check_template(text: str, where: str) -> None:
    """Refuse a template whose variables are neither ``sample.*`` nor ``item.*``."""
    for match in TEMPLATE.finditer(text):
        if match.group(1) not in ROOTS:
            raise ValueError(f"{where}: unknown template variable {{{{{match.group(1)}{match.group(2)}}}}}")


def sample_namespace(sample: Sample) -> dict[str, Any]:
    """What OpenAI graders see as ``sample``."""
    try:
        output_json: Any = parse_json_answer(sample.response)
    except ValueError:
        output_json = None
    return {
        "output_text": sample.response,
        "output_json": output_json,
        "output_tools": [],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": sample.response}}],
    }


def render(text: str, sample: Sample) -> str:
    roots = {"sample": sample_namespace(sample), "item": dict(sample.item)}

    def one(match: re.Match[str]) -> str:
        value: Any = roots[match.group(1)]
        path = [part for part in match.group(2).split(".") if part]
        for depth, part in enumerate(path):
            if isinstance(value, dict) and part in value:
                value = value[part]
            elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            else:
                name = ".".join([match.group(1), *path[: depth + 1]])
                raise TemplateError(f"the template variable {{{{{name}}}}} is not in the sample or item")
        return value if isinstance(value, str) else json.dumps(value)

    return TEMPLATE.sub(one, text)
