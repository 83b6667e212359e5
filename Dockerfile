FROM python:3.11-slim
# The source tree is built in /src and left there: the service runs from /data, so no `cnnfilterdb`
# folder of the source shadows the installed package (which alone has cnnfilterdb.service etc.).
WORKDIR /src
COPY pyproject.toml README.md ./
COPY cnnfilterdb ./cnnfilterdb
COPY ingest ./ingest
COPY service ./service
COPY sql ./sql
RUN pip install --no-cache-dir . && rm -rf /src/build
WORKDIR /data
# Compile the scan kernels of the installed package into numba's cache now, not at each container's first start.
RUN python -P -c "from cnnfilterdb.stats.histogram import warm_up; warm_up()"
ENV CNNFILTERDB_DB=/data/filterdb
EXPOSE 8000
CMD ["cnnfilterdb", "serve", "--host", "0.0.0.0", "--port", "8000"]
