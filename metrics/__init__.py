"""The pure KPI core: event contract, catalog, windows and formulas.

Nothing in this package imports faust, aiokafka or prometheus_client (a test enforces it),
so the worker and `kpi-engine replay` run exactly the same code.
"""
