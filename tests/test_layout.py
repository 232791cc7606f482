"""The package's layout: the core loads without Ray or W&B, no import cycles, modules stay small."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "stargan_ray"

# Plain torch: what a user can read, test and run in one process (docs/architecture.md, "Rooms").
CORE = [
    "stargan_ray.errors", "stargan_ray.config", "stargan_ray.config_bounds", "stargan_ray.storage",
    "stargan_ray.models",
    "stargan_ray.models.fan", "stargan_ray.losses", "stargan_ray.schedules", "stargan_ray.engine",
    "stargan_ray.checkpoint", "stargan_ray.grids", "stargan_ray.sample", "stargan_ray.align",
    "stargan_ray.metrics.frechet", "stargan_ray.metrics.kid", "stargan_ray.metrics.fid",
    "stargan_ray.metrics.lpips", "stargan_ray.metrics.weights", "stargan_ray.data.folders",
    "stargan_ray.data.synthetic", "stargan_ray.data.layout", "stargan_ray.data.shards",
    "stargan_ray.data.table", "stargan_ray.data.sampling", "stargan_ray.precision",
    "stargan_ray.metrics.eval_plan", "stargan_ray.metrics.eval_worker", "stargan_ray.inference",
    "stargan_ray.export", "stargan_ray.data.stream", "stargan_ray.metrics.sharding",
    "stargan_ray.video", "stargan_ray.video_translate",
    "stargan_ray.translate",
]
MAX_LINES = 420  # "about 400": a module past this is doing more than one thing


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path], top_level_only: bool) -> set[str]:
    """stargan_ray modules that `name` imports (module level only, or anywhere in the file)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    targets = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            candidates = [base] + [f"{base}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        targets |= {c for c in candidates if c in modules and c != name}
    return targets


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_core_imports_neither_ray_nor_wandb():
    code = ("import json, sys\n"
            f"for name in {CORE!r}:\n"
            "    __import__(name)\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('ray', 'wandb', 'tensorboardX', 'matplotlib'))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
    assert set(CORE) <= set(_modules()), "a core module named here no longer exists"


def test_no_module_imports_in_a_circle():
    modules = _modules()
    # Imports inside functions count too: a lazy import that closes a circle still ties two
    # rooms together (the old pipeline <-> prepare cycle was one).
    graph = {name: _imports(name, path, modules, top_level_only=False)
             for name, path in modules.items()}
    # A package's __init__ re-exporting its submodules is not a cycle of concerns.
    for name in graph:
        graph[name] = {t for t in graph[name] if not (name.startswith(t + ".")
                                                      and modules[t].name == "__init__.py")}
    assert _cycle(graph) is None


def test_no_library_module_defines_command_line_arguments():
    offenders = [name for name, path in _modules().items()
                 if not name.startswith("stargan_ray.cli")
                 and ("add_argument(" in path.read_text() or "import argparse" in path.read_text())]
    assert offenders == []


def test_modules_stay_small():
    sizes = {name: len(path.read_text().splitlines()) for name, path in _modules().items()}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


def _room(name: str) -> str:
    """A room: a top-level module or a subpackage of stargan_ray (stargan_ray.train.worker ->
    stargan_ray.train)."""
    return ".".join(name.split(".")[:2])


def test_no_room_imports_in_a_circle():
    """Rooms (top-level modules and subpackages) form no loop, imports inside functions counted:
    metrics -> train -> run_logging -> metrics was one that lazy imports hid."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        if name == "stargan_ray":
            continue  # the package root only holds __version__
        targets = {_room(t) for t in _imports(name, path, modules, top_level_only=False)}
        graph.setdefault(_room(name), set()).update(t for t in targets
                                                    if t not in (_room(name), "stargan_ray"))
    for targets in list(graph.values()):
        for t in targets:
            graph.setdefault(t, set())
    assert "stargan_ray.train" in graph and "stargan_ray.metrics" in graph["stargan_ray.train"]
    assert _cycle(graph) is None


MAX_FUNCTION_LINES = 60  # def line to last line, decorators and docstring included
MAX_PARAMETERS = 9


def _parameters(node: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    """Declared parameters: positional-only, ordinary, *args, keyword-only and **kwargs, without
    self and cls (a method's receiver is not something a caller passes)."""
    a = node.args
    names = [p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
    names += [p.arg for p in (a.vararg, a.kwarg) if p is not None]
    return [n for n in names if n not in ("self", "cls")]


def test_functions_stay_short_with_few_parameters():
    long, wide = {}, {}
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            if node.end_lineno - start + 1 > MAX_FUNCTION_LINES:
                long[f"{name}.{node.name}"] = node.end_lineno - start + 1
            if len(_parameters(node)) > MAX_PARAMETERS:
                wide[f"{name}.{node.name}"] = len(_parameters(node))
    assert long == {}, f"functions over {MAX_FUNCTION_LINES} lines"
    assert wide == {}, f"functions over {MAX_PARAMETERS} parameters"
