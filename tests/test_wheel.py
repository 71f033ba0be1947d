"""The wheel ships the Hydra configs: a non-editable install composes and lists every group."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.e2e
@pytest.mark.slow
def test_wheel_contains_configs_and_runs_from_an_installed_copy(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)],
                   check=True, capture_output=True, timeout=300)
    wheel = next(tmp_path.glob("rmlab-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {n for n in names if n.startswith("rmlab/conf/") and n.endswith(".yaml")}
    in_repo = {f"rmlab/conf/{p.relative_to(REPO / 'conf')}" for p in (REPO / "conf").rglob("*.yaml")}
    assert shipped == in_repo

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    where = subprocess.run([sys.executable, "-c", "import rmlab.config as c; print(c.CONFIG_DIR)"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert where == str(site / "rmlab" / "conf")
    job = subprocess.run([sys.executable, "-m", "rmlab.train", "model=smollm2_135m", "pooling=last", "--cfg", "job"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert job.returncode == 0, job.stderr
    assert "gguf_file: SmolLM2-135M-Instruct.Q4_1.gguf" in job.stdout
    assert "_target_: rmlab.model.pooling.LastTokenPooling" in job.stdout
