"""How often each catalog alert's condition holds on the generator's normal traffic.

Replays generated traffic (CRM and spend history of ``--days`` days, plus ``--minutes`` of
live email/web/social traffic at ``--rate``) and, for every KPI with an alert, counts the
closed windows of the alert's window (total, no dims) where the value is beyond the
threshold with the denominator at or above the volume guard, and the longest run of such
consecutive windows (what ``for`` would need to outlast).

    python benchmarks/alert_calibration.py --days 120 --rate 20 --minutes 60
"""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import Any

from kpi_engine.generator import Generator, GeneratorConfig
from kpi_engine.replay import replay_lines
from metrics.catalog import Catalog, load_catalog
from metrics.catalog_types import parse_duration_ms
from tests.helpers import DEFAULT_CATALOG


def ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


Breach = tuple[int, int, int, int, float | None]


def breaches(catalog: Catalog, cfg: GeneratorConfig, warmup_days: float = 45,
             warmup_live_min: float = 30) -> dict[str, Breach]:
    """alert KPI -> (windows over the guard, windows beyond the threshold, longest run of
    consecutive breaching windows, the alert's ``for`` in windows, the guarded value
    closest to the threshold's side: the lowest for ``below``, the highest for ``above``).

    Windows ending in the warm-up are left out: the generated history starts with no deal
    under way (wins come 10-20 days after their leads), and live traffic with no send
    answered yet. So are the windows ending after the input does (flushed, partial)."""
    crm_from = cfg.start_ms - (cfg.history_days - warmup_days) * 86_400_000
    live_from = cfg.start_ms + warmup_live_min * 60_000
    stop = cfg.start_ms + int(cfg.duration_s * 1000)  # windows past the input's end: partial
    gen = Generator(cfg)
    lines = (raw for _, (_, raw) in gen.messages())
    finals: dict[tuple[str, str], dict[str, Any]] = {}
    for kind, item in replay_lines(lines, catalog, now_ms=gen.end_ms + 60_000):
        if kind != "records":
            continue
        for rec in item:
            kpi = catalog.kpis[rec["kpi"]]
            start = crm_from if set(kpi.families) & {"crm", "spend"} else live_from
            if not start <= ms(rec["end"]) <= stop:
                continue
            if kpi.alert and rec["dims"] == {} and rec["window"] == kpi.alert.window:
                finals[(rec["kpi"], rec["end"])] = rec
    out: dict[str, Breach] = {}
    for name, kpi in catalog.kpis.items():
        a = kpi.alert
        if a is None:
            continue
        hop = catalog.window(kpi.families[0], a.window).hop_ms
        need = max(1, parse_duration_ms(a.for_) // hop)
        guarded = beyond = run = longest = 0
        values: list[float] = []
        for (k, _), rec in sorted(finals.items(), key=lambda x: x[0][1]):
            if k != name:
                continue
            den, value = rec["denominator"], rec["value"]
            hit = False
            if value is not None and (not kpi.denominator or den >= a.min_denominator):
                guarded += 1
                values.append(value)
                hit = value < a.threshold if a.op == "below" else value > a.threshold
            beyond += hit
            run = run + 1 if hit else 0
            longest = max(longest, run)
        worst = (min(values) if a.op == "below" else max(values)) if values else None
        out[name] = (guarded, beyond, longest, need, worst)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, default=120, help="days of CRM and spend history")
    ap.add_argument("--rate", type=float, default=20, help="live events per second")
    ap.add_argument("--minutes", type=float, default=60, help="minutes of live traffic")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--catalog", help="a catalog file (default: the shipped one)")
    args = ap.parse_args()
    catalog = load_catalog(args.catalog) if args.catalog else DEFAULT_CATALOG
    cfg = GeneratorConfig(rate=args.rate, duration_s=args.minutes * 60, seed=args.seed,
                          history_days=args.days)
    print(f"{'alert KPI':32} {'window':>6} {'threshold':>10} {'worst':>10} {'guarded':>8} "
          f"{'beyond':>7} {'run':>5} {'for':>5}  fires")
    for name, (guarded, beyond, longest, need, worst) in breaches(catalog, cfg).items():
        a = catalog.kpis[name].alert
        assert a is not None
        shown = "-" if worst is None else f"{worst:.4g}"
        print(f"{name:32} {a.window:>6} {a.op[0]} {a.threshold:<8.4g} {shown:>10} {guarded:8d} "
              f"{beyond:7d} {longest:5d} {need:5d}  {'YES' if longest >= need else 'no'}")


if __name__ == "__main__":
    main()
