"""`raysl up` / `raysl down`: a long-lived local Ray that later commands join, as a user runs it.

Every step is the real console script in its own process. The head runs from its own temp dir
and ports; ``raysl down`` stops its process group only (never a machine-wide ``ray stop``), so
the test session's Ray is untouched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from raysl.cluster.local import group_members
from tests.processes import die_with_parent

pytestmark = pytest.mark.slow
RAYSL = Path(sys.executable).parent / "raysl"


def _raysl(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(RAYSL), *args], env=env, cwd=cwd, text=True, capture_output=True,
                          timeout=600, preexec_fn=die_with_parent)


def test_commands_join_the_local_ray_of_raysl_up_until_raysl_down(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    env["RAYSL_HOME"] = str(tmp_path / "home")
    images = tmp_path / "images" / "shapes"
    images.mkdir(parents=True)
    for i in range(8):
        Image.new("RGB", (16, 16), (30 * i, 0, 0)).save(images / f"{i}.png")

    up = _raysl("up", "--num-cpus", "2", env=env, cwd=tmp_path)
    state = tmp_path / "home" / "up.json"
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        head = json.loads(state.read_text())
        assert f"local Ray up at {head['address']}" in up.stdout and "raysl down" in up.stdout
        again = _raysl("up", env=env, cwd=tmp_path)
        assert f"already up at {head['address']}" in again.stdout

        # A command run with no RAY_ADDRESS joins it, says so, and works there.
        shards = _raysl("shards", str(tmp_path / "images"), str(tmp_path / "out"),
                        "--shard-size", "4", env=env, cwd=tmp_path)
        assert shards.returncode == 0, shards.stdout[-3000:] + shards.stderr[-3000:]
        assert f"joining the local Ray of `raysl up` at {head['address']}" in shards.stdout
        assert len(list((tmp_path / "out").glob("*.tar"))) == 2
    finally:
        down = _raysl("down", env=env, cwd=tmp_path)
    assert down.returncode == 0 and f"stopped the local Ray at {head['address']}" in down.stdout
    assert not state.exists() and not group_members(head["pid"])  # every process of the head
    assert "no local Ray of `raysl up` is running" in _raysl("down", env=env, cwd=tmp_path).stdout
