"""The Flax adapter as a third party ships it: a ``padaudit`` entry point, lazy imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

pytest.importorskip("flax.nnx")

ROOT = Path(__file__).resolve().parents[2]


def _run(code: str, *paths: Path) -> str:
    env_path = [str(ROOT / "src"), *map(str, paths)]
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": ":".join(env_path), "PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"},
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip()


def test_pyproject_declares_the_entry_point():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert data["project"]["entry-points"]["padaudit"] == {
        "flax": "pytest_padaudit.adapters.flax:ADAPTER"
    }
    assert "flax" not in (ROOT / "src/pytest_padaudit/adapters/__init__.py").read_text()


def test_the_entry_point_finds_flax_models(tmp_path):
    """A distribution declaring pyproject's entry point is all padaudit needs.

    The editable install in the shared venv predates the entry point, so a dist-info
    carrying exactly pyproject's ``[project.entry-points.padaudit]`` table is put on the
    path of a fresh interpreter; nothing registers the adapter by hand there.
    """
    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    dist = tmp_path / "padaudit_flax_probe-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: padaudit-flax-probe\nVersion: 1.0\n"
    )
    lines = ["[padaudit]", *(f"{k} = {v}" for k, v in table["padaudit"].items())]
    (dist / "entry_points.txt").write_text("\n".join(lines) + "\n")
    code = (
        "from flax import nnx\n"
        "from pytest_padaudit import audit\n"
        "from pytest_padaudit.core.hooks import plugin_manager\n"
        "from pytest_padaudit.adapters.flax import ADAPTER\n"
        "class M(nnx.Module):\n"
        "    def __init__(self):\n"
        "        self.embed = nnx.Embed(20, 4, rngs=nnx.Rngs(0))\n"
        "    def __call__(self, ids):\n"
        "        return self.embed(ids).mean(axis=1)\n"
        "report = audit(M(), pad_idx=0, checks=('grad',), seq_len=4)\n"
        "print(report.framework, plugin_manager().get_name(ADAPTER), "
        "sorted(f.cause for f in report.findings))\n"
    )
    assert _run(code, tmp_path).splitlines()[-1] == "flax flax ['no_padding_idx']"


def test_importing_the_plugin_and_the_hook_object_imports_no_jax():
    code = (
        "import sys, pytest_padaudit.plugin, pytest_padaudit.adapters.flax as f\n"
        "from pytest_padaudit.core.options import AuditOptions\n"
        "assert f.ADAPTER.padaudit_adapt(object(), AuditOptions()) is None\n"
        "from pytest_padaudit.core.engine import find_handle\n"
        "assert find_handle(object()) is None\n"
        "print(sorted(m for m in ('jax', 'jaxlib', 'flax', 'optax') if m in sys.modules))\n"
    )
    assert _run(code) == "[]"
