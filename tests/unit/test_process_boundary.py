"""The process boundary is a folder boundary: control-plane folders never import the torch side.

The API server, control-plane services and catalog run without torch (the API process starts in a
second and holds no model memory). Torch-side code lives in ``model/``, ``engine/``, ``recipes/`` and ``knowledge/``
and runs in worker and engine processes only. This test reads every control-plane module's imports,
including imports inside functions, so a lazy import cannot slip across either.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import tuneforge

PACKAGE = Path(tuneforge.__file__).parent
CONTROL_PLANE = ("api", "console", "serving", "catalog", "data", "evaluation", "graders", "jobs", "advisor")
WORKER_SIDE = {PACKAGE / "jobs" / "worker.py", PACKAGE / "jobs" / "ranks.py"}
"""The job worker and a data-parallel job's ranks are the processes that run recipes; theirs are the
control-plane files allowed across."""
TORCH_SIDE = ("tuneforge.model", "tuneforge.engine", "tuneforge.recipes", "tuneforge.knowledge")
HEAVY_LIBRARIES = ("torch", "peft", "safetensors", "faiss")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import in the file, wherever it sits."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found.extend((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
    return found


def crossings(path: Path) -> list[str]:
    bad = []
    for line, module in imported_modules(path):
        top = module.split(".")[0]
        if any(module == side or module.startswith(side + ".") for side in TORCH_SIDE) or top in HEAVY_LIBRARIES:
            bad.append(f"{path.relative_to(PACKAGE)}:{line} imports {module}")
    return sorted(set(bad))


def control_plane_files() -> list[Path]:
    return sorted(
        path for folder in CONTROL_PLANE for path in (PACKAGE / folder).rglob("*.py") if path not in WORKER_SIDE
    )


@pytest.mark.parametrize("folder", CONTROL_PLANE)
def test_control_plane_folder_never_imports_the_torch_side(folder: str) -> None:
    files = [path for path in control_plane_files() if path.is_relative_to(PACKAGE / folder)]
    assert files, f"no modules found under {folder}/"
    problems = [problem for path in files for problem in crossings(path)]
    assert problems == []


def test_the_check_sees_imports_inside_functions() -> None:
    """The worker runs recipes through a lazy import; the scanner must report it (so it can fail)."""
    problems = crossings(PACKAGE / "jobs" / "worker.py")
    assert any("tuneforge.recipes" in problem for problem in problems), problems


def test_torch_side_folders_exist_where_the_rule_says() -> None:
    for side in TORCH_SIDE:
        folder = PACKAGE / side.split(".")[1]
        assert (folder / "__init__.py").is_file(), folder
