"""What Prometheus, Alertmanager and Grafana need to run beside the engine, shipped in the
wheel: the static configuration here, and the rules and dashboards generated from a catalog.
`kpi-engine provisioning --out DIR` writes the lot with the repository's layout (the
repository's own prometheus/, alertmanager/ and grafana/ are that command's output)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from metrics.catalog import Catalog

#: the static files, by their path under the output folder
STATIC = ("prometheus/prometheus.yml", "alertmanager/alertmanager.yml",
          "grafana/provisioning/dashboards/kpi-engine.yml",
          "grafana/provisioning/datasources/prometheus.yml")


def provisioning_files(catalog: Catalog, grafana_url: str | None = None) -> dict[str, str]:
    """Path under the output folder -> contents: the static configuration, the alert rules
    with their promtool tests, the dashboards and the alerts' runbook, for this catalog."""
    from kpi_engine import alerting, dashboards

    base = files(__name__)
    out = {rel: base.joinpath(rel).read_text("utf-8") for rel in STATIC}
    rules = alerting.generated_files(catalog, grafana_url or alerting.DEFAULT_GRAFANA_URL)
    out.update({f"prometheus/{rel}": text for rel, text in rules.items()})
    out.update({f"grafana/dashboards/{name}": text
                for name, text in dashboards.generated_files(catalog).items()})
    out["docs/runbook.md"] = alerting.runbook(catalog)
    return out


def write(catalog: Catalog, out_dir: Path, grafana_url: str | None = None) -> list[Path]:
    written = []
    for rel, text in provisioning_files(catalog, grafana_url).items():
        path = out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, "utf-8")
        written.append(path)
    return written
