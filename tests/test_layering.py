"""The model side never imports Ray: registry consumers load raysl.nn without a cluster."""

import ast
import subprocess
import sys
from pathlib import Path

RAYSL = Path(__file__).resolve().parents[1] / "raysl"
MODEL_SIDE = [*sorted((RAYSL / "methods").glob("*.py")), *sorted((RAYSL / "nn").glob("*.py")),
              RAYSL / "losses.py", RAYSL / "schedules.py", RAYSL / "distributed.py",
              RAYSL / "config.py", RAYSL / "registry.py",
              # the evaluation protocols themselves (Ray runs them from eval/extract.py, suite.py)
              *[RAYSL / "eval" / f"{m}.py" for m in ("knn", "linear", "finetune", "online",
                                                     "splits", "features", "plots")],
              # sweep definitions, results and the champion rule (Tune runs in sweep/run.py)
              *[RAYSL / "sweep" / f"{m}.py" for m in ("spec", "results", "champion")],
              # decoding, array formats, storage access and augmentation (Ray Data calls them)
              *[RAYSL / "data" / f"{m}.py" for m in ("decode", "formats", "storage", "views")]]


def _imported_modules(path: Path) -> set[str]:
    mods = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            mods |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            mods.add(node.module)
    return mods


def test_model_side_files_do_not_import_ray():
    for path in MODEL_SIDE:
        ray_mods = {m for m in _imported_modules(path) if m == "ray" or m.startswith("ray.")}
        assert not ray_mods, f"{path.relative_to(RAYSL.parent)} imports {ray_mods}"


def test_loading_the_model_side_does_not_load_ray():
    code = ("import sys, raysl.methods, raysl.nn.backbones, raysl.losses, raysl.eval.linear, "
            "raysl.eval.finetune, raysl.eval.online, raysl.eval.plots, raysl.eval.knn, "
            "raysl.sweep.spec, raysl.sweep.results, raysl.sweep.champion, raysl.data.decode, "
            "raysl.data.formats, raysl.data.storage, raysl.data.views; "
            "print([m for m in sys.modules if m == 'ray' or m.startswith('ray.')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
