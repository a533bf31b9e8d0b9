# The kpi-engine image: one worker per container (`docker-compose up --scale worker=N`).
FROM python:3.11-slim
WORKDIR /app
# the pinned dependencies first (a layer rebuilt only when the lock changes), then the
# package itself without resolving anything again
COPY requirements.lock ./
RUN pip install --no-cache-dir -r requirements.lock
COPY pyproject.toml README.md LICENSE ./
COPY kpi_engine ./kpi_engine
COPY metrics ./metrics
COPY streams ./streams
RUN pip install --no-cache-dir --no-deps . && useradd --create-home kpi
USER kpi
EXPOSE 6066
# the worker's local state (event ids, RocksDB): kept across restarts of the container, so
# a restart reuses it instead of rebuilding it from the changelog
ENV KPI_WEB_HOST=0.0.0.0 KPI_WEB_PORT=6066 KPI_DATA_DIR=/home/kpi/data
HEALTHCHECK --interval=10s --timeout=3s --retries=5 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:6066/health', timeout=2)"
ENTRYPOINT ["kpi-engine"]
CMD ["worker"]
