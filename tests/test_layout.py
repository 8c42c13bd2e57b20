"""The code's layout as the README's module table states it: every module of the two packages is in the table with
its layer, and every import between them points to a lower layer (the algorithm never imports the search)."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("jepa_dreamer", "jepa_search")
# Packages without code: Hydra config folders
NOT_CODE = ("jepa_dreamer.configs",)


def _layers() -> dict[str, int]:
    """The README's module table: `| layer | `path` | job |` rows, module name -> layer."""
    layers = {}
    for line in (REPO / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].isdigit() and cells[1].startswith("`") and cells[1].endswith(".py`"):
            path = cells[1].strip("`").removesuffix(".py").removesuffix("/__init__")
            layers[path.replace("/", ".")] = int(cells[0])
    return layers


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            if name not in (*PACKAGES, *NOT_CODE):  # the packages' own __init__ only set up their loggers
                found[name] = path
    return found


def _project_imports(path: Path) -> set[str]:
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        imported |= {n for n in names if n.split(".")[0] in PACKAGES}
    return imported


def test_every_module_is_in_the_readme_table_and_imports_only_lower_layers():
    layers, modules = _layers(), _modules()
    assert set(modules) == set(layers), f"README table and code differ: {set(modules) ^ set(layers)}"
    upward = []
    for name, path in modules.items():
        for target in _project_imports(path):
            # `from jepa_search.report import write_report` names the package; `from x import y` may name a module
            module = target if target in layers else target.rsplit(".", 1)[0]
            if module in layers and module != name and layers[module] >= layers[name]:
                upward.append(f"{name} (layer {layers[name]}) imports {module} (layer {layers[module]})")
    assert not upward, "\n".join(sorted(upward))


def test_the_command_line_and_the_study_s_modules_load_no_training_stack():
    # The command line answers `--help` and a bad argument at once, and what opens, checks and shares a study (a
    # worker's claim, the tests' racing workers) starts in a fraction of a second: torch, Lightning and SheepRL take
    # seconds of CPU to import in every process
    import subprocess
    import sys

    light = ["jepa_search.cli", "jepa_search.study", "jepa_search.workers", "jepa_search.validate"]
    code = f"import sys, {', '.join(light)}; print(sorted({{'torch', 'lightning', 'sheeprl'}} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout
