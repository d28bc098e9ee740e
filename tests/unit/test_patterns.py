"""Every regular expression in src/ matches in linear time (issue 9, item 12) and whole strings only.

The audit is automatic: every string literal that src/ hands to ``re`` or names ``*_PATTERN`` (or
passes as ``pattern=``) is found in the source and run against adversarial input, so a pattern added
later is audited without anyone remembering to list it. Dynamic patterns (f-strings) must be built
with ``re.escape`` and are listed below by file once reviewed.
"""

from __future__ import annotations

import ast
import re
import string
import time
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "tuneforge"
RE_FUNCTIONS = {"compile", "match", "fullmatch", "search", "findall", "finditer", "sub", "subn", "split"}
REVIEWED_DYNAMIC = {"recipes/performance.py", "demo.py"}
"""f-string patterns that interpolate only ``re.escape(...)`` of a fixed table or an expected answer."""
BOUND_S = 2.0
"""A generous safety net: linear patterns take microseconds; the old job-name pattern took 7.5 s at 28 characters."""


def _is_pattern_use(node: ast.AST) -> bool:
    if isinstance(node, ast.Call):
        func = node.func
        return isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "re"
    return False


def find_patterns() -> tuple[dict[str, str], list[str]]:
    """(literal pattern -> where it is, dynamic patterns' files) across src/."""
    literals: dict[str, str] = {}
    dynamic: list[str] = []
    for path in sorted(SRC.rglob("*.py")):
        relative = str(path.relative_to(SRC))
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            candidates: list[ast.expr] = []
            if isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Name) and t.id.endswith("PATTERN") for t in targets) and node.value:
                    candidates.append(node.value)
            if _is_pattern_use(node):
                assert isinstance(node, ast.Call)
                if isinstance(node.func, ast.Attribute) and node.func.attr in RE_FUNCTIONS and node.args:
                    candidates.append(node.args[0])
            if isinstance(node, ast.Call):
                candidates += [kw.value for kw in node.keywords if kw.arg == "pattern"]
            for candidate in candidates:
                if isinstance(candidate, ast.Call) and _is_pattern_use(candidate) and candidate.args:
                    candidate = candidate.args[0]
                if isinstance(candidate, ast.Constant) and isinstance(candidate.value, str):
                    literals.setdefault(candidate.value, f"{relative}:{candidate.lineno}")
                elif isinstance(candidate, ast.JoinedStr):
                    dynamic.append(relative)
                elif isinstance(candidate, ast.Attribute | ast.Name):
                    continue  # a named pattern, found where it is defined
    return literals, dynamic


LITERALS, DYNAMIC = find_patterns()

ALPHABET = string.ascii_letters[:3] + string.digits[:2] + "-_.+:/ @=A\t"
PREFIXES = [
    "",
    "a",
    "arn:aws:iam::123456789012:role/",
    "arn:aws:bedrock:us-east-1::",
    "s3://bucket/",
    "AWS4-HMAC-SHA256 ",
]


def adversarial() -> list[str]:
    """Botocore-style worst cases: a prefix, a long run of allowed characters, then a forbidden one."""
    out = []
    for prefix in PREFIXES:
        for length in (50, 500, 5000):
            for char in ALPHABET:
                for tail in ("!", "\n", "\x00", ""):
                    out.append(prefix + char * length + tail)
            out.append(prefix + "a-" * (length // 2) + "!")
            out.append(prefix + "a-_" * (length // 3) + "!")
    return out


STRINGS = adversarial()


def test_the_audit_finds_the_patterns_it_must() -> None:
    assert len(LITERALS) >= 10
    assert r"[a-zA-Z0-9][a-zA-Z0-9+\-.]*" in LITERALS  # the job name pattern
    assert set(DYNAMIC) <= REVIEWED_DYNAMIC, f"review these dynamic patterns: {set(DYNAMIC) - REVIEWED_DYNAMIC}"


@pytest.mark.parametrize("pattern", sorted(LITERALS), ids=lambda p: LITERALS[p])
def test_pattern_matches_adversarial_input_in_linear_time(pattern: str) -> None:
    compiled = re.compile(pattern)
    for text in STRINGS:
        started = time.perf_counter()
        compiled.fullmatch(text)
        compiled.search(text)
        elapsed = time.perf_counter() - started
        assert elapsed < BOUND_S, f"{pattern!r} took {elapsed:.2f} s on {text[:40]!r}... ({len(text)} chars)"


def test_job_name_pattern_repro_is_refused_quickly() -> None:
    from tuneforge.api.bedrock.schemas import JOB_NAME_PATTERN

    started = time.perf_counter()
    assert re.fullmatch(JOB_NAME_PATTERN, "a" + "-" * 26 + "!") is None
    assert time.perf_counter() - started < BOUND_S
    assert re.fullmatch(JOB_NAME_PATTERN, "a--b+c.d")


@pytest.mark.parametrize(
    ("pattern_name", "bedrock_pattern", "samples"),
    [
        (
            "JOB_NAME_PATTERN",
            r"[a-zA-Z0-9](-*[a-zA-Z0-9\+\-\.])*",
            ["a", "a-b", "a--b", "a-", "a.b+c", "-a", "a_b", "ab--", "A9.-+"],
        ),
        (
            "MODEL_NAME_PATTERN",
            r"([0-9a-zA-Z][_-]?){1,63}",
            ["a", "a-", "a_b", "a__b", "a-_b", "_a", "ab-c_d-", "a--", "9Z"],
        ),
        (
            "TOKEN_PATTERN",
            r"[a-zA-Z0-9]([-a-zA-Z0-9]{0,254}[a-zA-Z0-9])?",
            ["a", "a-b", "a-", "-a", "a--b", "ab"],
        ),
    ],
)
def test_linear_patterns_accept_exactly_what_bedrocks_patterns_accept(
    pattern_name: str, bedrock_pattern: str, samples: list[str]
) -> None:
    from tuneforge.api.bedrock import schemas

    ours = getattr(schemas, pattern_name)
    for sample in samples:
        assert bool(re.fullmatch(ours, sample)) == bool(re.fullmatch(bedrock_pattern, sample)), sample


def test_model_id_with_a_trailing_newline_is_refused(fast_tmp: Path) -> None:
    """``$`` matches before a final newline; every pattern is matched whole (fullmatch) instead."""
    from tuneforge.errors import ValidationException
    from tuneforge.services import Services
    from tuneforge.settings import Settings

    services = Services.create(Settings(data_dir=fast_tmp / "data"))
    try:
        with pytest.raises(ValidationException, match="model id"):
            services.catalog.register("my.model\n", str(fast_tmp / "data" / "nowhere"))
    finally:
        services.close()


DOLLAR_REVIEWED = {
    "api/auth.py": "matched against the stripped header, which cannot end in a newline",
    "settings.py": "a pydantic pattern: Rust's regex, where $ is the end of the text",
}


def test_no_pattern_in_src_relies_on_dollar_before_a_newline() -> None:
    offenders = {
        p: where
        for p, where in LITERALS.items()
        if p.endswith("$") and not p.endswith(r"\$") and where.split(":")[0] not in DOLLAR_REVIEWED
    }
    assert not offenders, f"use fullmatch (or \\Z) instead of $: {offenders}"
