"""The shape docs/design.md promises holds: its module map is the tree, each run-directory file name is written in
one module, each package says what it owns, and no module of the library or its launcher grows past a few hundred
lines. (The dependency rules themselves are import-linter's, run by `make lint`.)"""

import ast
import re
import subprocess
import sys
from pathlib import Path

from tests.support import REPO

PYTHON_TREES = ("data_prep", "pipeline", "launch")
LAYOUT = REPO / "pipeline" / "run" / "layout.py"
RUN_FILES = ("config.yaml", "metrics.jsonl", "results.json", "checkpoints", "layer_responses.json", "run.lock",
             "wandb_id", "wandb_last_step")
MAX_LINES = 400


def design_map() -> dict:
    """{"pipeline/train": {"loop", "setup", ...}, "launch": {"demo", ...}, "configs": set(), ...}: each folder the
    map names, with the modules it names in it."""
    text = (REPO / "docs" / "design.md").read_text()
    block = text.split("## Module map", 1)[1].split("```", 2)[1]
    entries: dict = {}
    top = current = None
    for line in block.splitlines():
        folder = re.match(r"^(\s{0,2})(\w+)/\s{2,}(.*)$", line)
        modules = re.match(r"^  (\w+(?:, \w+)*)\s{2,}\(", line)
        if folder:
            indent, name, rest = folder.groups()
            top = name if not indent else top
            current = name if not indent else f"{top}/{name}"
            entries[current] = set()
        elif modules:
            entries[top].update(modules.group(1).split(", "))
            continue
        else:
            # A line that goes on with the one before: a new item there starts with "·", else the first words
            # end the item before.
            rest = line.strip()
            rest = rest if rest.startswith("·") else rest.partition("·")[2]
        if rest.strip().startswith("("):
            continue  # a description, not a list of modules
        for item in rest.split("·"):
            word = re.match(r"\s*(\w+)", item)
            if word:
                entries[current].add(word.group(1))
    return entries


def test_the_design_map_is_the_tree():
    entries = design_map()
    named = {folder for folder in entries if folder.split("/")[0] in PYTHON_TREES}
    actual = {str(init.parent.relative_to(REPO))
              for tree in PYTHON_TREES for init in (REPO / tree).rglob("__init__.py")}
    assert named == actual, f"in the map only: {sorted(named - actual)}; in the tree only: {sorted(actual - named)}"
    for folder in set(entries) - named:  # configs/, tests/, benchmarks/, docs/
        assert (REPO / folder).is_dir(), folder
    for folder in named:
        modules = {p.stem for p in (REPO / folder).glob("*.py")} - {"__init__"}
        listed = entries[folder] - {"__init__"}
        assert listed == modules, (f"{folder}: in the map only {sorted(listed - modules)}, in the tree only "
                                   f"{sorted(modules - listed)}")


def test_each_run_directory_file_name_is_written_in_one_module():
    """The names of a run's files are `pipeline.run.layout`'s alone; code elsewhere asks `RunDir` (tests may
    name them: they check the layout)."""
    found = []
    for tree in (*PYTHON_TREES, "benchmarks"):
        for path in sorted((REPO / tree).rglob("*.py")):
            if path == LAYOUT:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    value = node.value.strip("/")
                    if any(value == name or value.endswith("/" + name) or value.startswith(name + "/")
                           for name in RUN_FILES):
                        found.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value!r}")
    assert not found, "\n".join(found)
    layout = LAYOUT.read_text()
    assert all(f'"{name}"' in layout for name in RUN_FILES)


def test_packages_say_what_they_own_and_modules_stay_small():
    for tree in PYTHON_TREES:
        for init in (REPO / tree).rglob("__init__.py"):
            assert ast.get_docstring(ast.parse(init.read_text())), f"{init.relative_to(REPO)} has no docstring"
    for tree in ("pipeline", "launch"):
        for path in (REPO / tree).rglob("*.py"):
            lines = len(path.read_text().splitlines())
            assert lines <= MAX_LINES, f"{path.relative_to(REPO)}: {lines} lines"
    top = [p.name for p in (REPO / "pipeline").glob("*.py")]
    assert len(top) <= 6, top  # the library's concerns are its packages


def test_the_dependency_rules_hold():
    """import-linter's contracts (pyproject.toml: pipeline never imports launch, data_prep neither, the layers of
    pipeline/ and launch/, no cycle between siblings anywhere) hold on the tree as it is: `make lint` runs them
    too, and this keeps them in the suite."""
    lint_imports = Path(sys.executable).parent / "lint-imports"
    proc = subprocess.run([str(lint_imports)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0 and "0 broken" in proc.stdout, proc.stdout[-3000:] + proc.stderr
