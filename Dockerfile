FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY cnnfilterdb ./cnnfilterdb
COPY ingest ./ingest
COPY service ./service
COPY sql ./sql
RUN pip install --no-cache-dir .
# Compile the scan kernels into numba's cache now, not at each container's first start.
RUN python -c "from cnnfilterdb.stats.histogram import warm_up; warm_up()"
ENV CNNFILTERDB_DB=/data/filterdb
EXPOSE 8000
CMD ["cnnfilterdb", "serve", "--host", "0.0.0.0", "--port", "8000"]
