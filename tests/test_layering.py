"""The package's import structure: layers import downward only, no cycles, no Ray on the model side.

Imports are read from the source (every ``import``, including those inside functions), so an
arrow that only runs on some code path still counts.
"""

import ast
import subprocess
import sys
from pathlib import Path

RAYSL = Path(__file__).resolve().parents[1] / "raysl"

# Bottom to top. A module may import from its own layer and the ones below, never above.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "redact", "catalog", "schedules", "distributed", "losses", "clustering",
     "checkpoint", "config", "console"),  # ground
    ("nn",),
    ("methods",),
    ("data",),
    ("tracking", "cluster"),  # MLflow; joining Ray, its nodes, shared storage
    ("eval",),
    ("serving", "train"),  # consumers' side (the pyfunc model, embedding, exports); training
    ("pretrain", "evaluate", "curate"),  # jobs: one run, one evaluation, one curation
    ("sweep",),  # a sweep's trials are pretraining jobs
    ("cli",),
]

MODEL_SIDE = [*sorted((RAYSL / "methods").glob("*.py")), *sorted((RAYSL / "nn").glob("*.py")),
              *sorted((RAYSL / "config").glob("*.py")),
              RAYSL / "losses.py", RAYSL / "clustering.py", RAYSL / "schedules.py",
              RAYSL / "distributed.py",
              RAYSL / "catalog.py", RAYSL / "errors.py", RAYSL / "redact.py",
              RAYSL / "checkpoint.py", RAYSL / "console.py",
              # the evaluation protocols themselves (Ray runs them from eval/extract.py, suite.py)
              *sorted((RAYSL / "eval" / "protocols").glob("*.py")),
              *[RAYSL / "eval" / f"{m}.py" for m in ("online", "splits", "features", "plots")],
              # sweep definitions, trial resources, results and the champion rule (Tune runs
              # in sweep/tuner.py)
              *[RAYSL / "sweep" / f"{m}.py" for m in ("spec", "plan", "results", "champion")],
              # decoding, storage access, the readers (one module per format), augmentation, the
              # pretext tasks and the views (Ray Data calls them from data/source.py and
              # data/pipeline.py)
              *[RAYSL / "data" / f"{m}.py" for m in ("decode", "storage", "augment", "pretext",
                                                     "views")],
              *sorted((RAYSL / "data" / "readers").glob("*.py")),
              RAYSL / "serving" / "pyfunc.py", RAYSL / "serving" / "model_code.py",
              # curation's maths and report (Ray runs them from curate/command.py)
              *[RAYSL / "curate" / f"{m}.py" for m in ("dedup", "hierarchy", "report")],
              RAYSL / "tracking" / "auth.py"]  # what a consumer's server and login load


def _module_name(path: Path) -> str:
    parts = path.relative_to(RAYSL.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(RAYSL.rglob("*.py"))}


def _imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports.

    ``from pkg import name`` counts ``pkg.name`` when that is a module, and ``pkg`` itself only
    when some name is not (``from raysl import catalog`` depends on the catalog, not on
    ``raysl/__init__.py``).
    """
    mods = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            mods |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            submodules = {f"{node.module}.{a.name}" for a in node.names
                          if f"{node.module}.{a.name}" in MODULES}
            mods |= submodules
            if len(submodules) < len(node.names):  # names defined in the module itself
                mods.add(node.module)
    return mods


def _raysl_imports(name: str) -> set[str]:
    """The raysl modules that module ``name`` imports (packages count as their ``__init__``)."""
    return {m for m in _imported_modules(MODULES[name]) if m in MODULES and m != name}


def _layer(module: str) -> int:
    unit = module.split(".")[1] if "." in module else module
    for i, units in enumerate(LAYERS):
        if unit in units:
            return i
    raise AssertionError(f"{module} belongs to no layer of tests/test_layering.py: add it")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    assert _cycles({m: _raysl_imports(m) for m in MODULES}) == []


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_every_import_points_down_the_layers():
    upward = [f"{m} (layer {_layer(m)}) imports {d} (layer {_layer(d)})"
              for m in MODULES if m != "raysl" for d in sorted(_raysl_imports(m))
              if d != "raysl" and _layer(d) > _layer(m)]
    assert upward == []


def test_model_side_files_do_not_import_ray():
    for path in MODEL_SIDE:
        ray_mods = {m for m in _imported_modules(path) if m == "ray" or m.startswith("ray.")}
        assert not ray_mods, f"{path.relative_to(RAYSL.parent)} imports {ray_mods}"


def test_loading_the_model_side_does_not_load_ray():
    code = ("import sys, raysl.methods, raysl.nn.backbones, raysl.losses, raysl.eval.protocols, "
            "raysl.eval.online, raysl.eval.plots, "
            "raysl.sweep.spec, raysl.sweep.results, raysl.sweep.champion, raysl.data.decode, "
            "raysl.data.storage, raysl.data.augment, raysl.data.pretext, raysl.data.views, "
            "raysl.data.readers, "
            "raysl.checkpoint; "
            "from raysl.config import Config; Config.from_dict({'method': {'name': 'byol'}}); "
            "print([m for m in sys.modules if m == 'ray' or m.startswith('ray.')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
