"""The direction of dependencies: data_prep <- pipeline <- launch. The library never imports its launcher."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def imported_packages(path: Path) -> set:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_pipeline_never_imports_launch_and_data_prep_neither():
    offenders = [f"{path.relative_to(REPO)} imports {package}"
                 for folder, forbidden in (("pipeline", {"launch"}), ("data_prep", {"launch", "pipeline"}))
                 for path in sorted((REPO / folder).rglob("*.py"))
                 for package in imported_packages(path) & forbidden]
    assert not offenders, offenders
