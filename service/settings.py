"""Every setting of the service, in one place: flags of `cnnfilterdb serve` or CNNFILTERDB_* variables."""
from __future__ import annotations

from pathlib import Path

from pydantic import ByteSize, Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CNNFILTERDB_", extra="ignore")

    db: Path = Field(Path("./filterdb"), description="store directory (CNNFILTERDB_DB)")
    # Where to listen is not a setting: `serve --host/--port` hand it to uvicorn (main.run).
    workers: int = Field(1, ge=1, description="uvicorn worker processes")

    # POST /v1/sql and `cnnfilterdb sql`: confined worker processes (service/usersql/)
    sql_workers: int = Field(2, ge=1, le=64, description="worker processes running user SQL; more concurrent queries get a 429")
    sql_timeout_s: float = Field(5.0, gt=0, le=86_400, description="a query running longer is interrupted, or its worker killed")
    sql_default_rows: int = Field(1000, ge=1, description="row cap when a request gives no max_rows")
    sql_max_rows: int = Field(100_000, ge=1, le=10_000_000, description="the largest max_rows a request may ask for")
    sql_max_bytes: int = Field(16_000_000, ge=1000, le=2**30, description="cap on the JSON bytes of a result's rows")
    sql_memory_limit: str = Field("1GB", description="DuckDB's memory_limit in each SQL worker")
    sql_worker_memory_cap: ByteSize = Field("3GiB", description="address-space cap (RLIMIT_AS) of each SQL worker: its hard memory limit")

    # The DuckDB instance behind every other endpoint
    duckdb_memory_limit: str = Field("2GB", description="memory of the DuckDB instance of the other endpoints")
    duckdb_threads: int = Field(2, ge=1, description="threads of each DuckDB instance")
    duckdb_spill_max: str = Field("4GB", description="disk the DuckDB instance of the other endpoints may spill to "
                                                     "(a temporary directory of the service's own, removed at exit)")

    # The analysis endpoints (limits per request: cnnfilterdb/analysis.py)
    analysis_concurrency: int = Field(2, ge=1, le=64, description="analyses computed at once; others wait their turn")
    analysis_wait_s: float = Field(10.0, ge=0, le=600, description="how long a request waits for its turn before a 429")
    analysis_queue: int = Field(16, ge=0, le=1024, description="requests that may wait for a turn at once; more get a 429 "
                                                              "at once (a waiting request holds one of the server's threads)")
    export_concurrency: int = Field(2, ge=1, le=64, description="exports (GET /v1/filters) streaming at once; more get a 429")
    export_send_timeout_s: float = Field(60.0, gt=0, le=3600, description="an export whose client takes no data for this "
                                                                     "long is cut off (its slot freed)")
    export_stall_s: float = Field(5.0, gt=0, le=3600, description="an export whose client has taken no data for this "
                                                                 "long gives its slot to a new export that finds "
                                                                 "none free (rather than a 429)")
    export_nice: int = Field(10, ge=0, le=19, description="CPU niceness of the threads reading and encoding exports "
                                                          "(higher: other requests go first under load)")
    layer_filters_concurrency: int = Field(2, ge=1, le=64, description="answers of GET /v1/layers/{id}/filters "
                                           "(JSON pages and .npy) produced at once; more get a 429 at once. They "
                                           "are produced at export_nice, and like exports are cut off after "
                                           "export_send_timeout_s without progress, or after export_stall_s if a "
                                           "new one needs the slot")
    figure_cache_bytes: int = Field(64_000_000, ge=0, description="rendered figures kept in memory, by ETag (GET /v1/plots)")

    # POST /v1/check: a model file uploaded and checked against the population (service/routers/check.py)
    max_checks: int = Field(2, ge=1, le=64, description="checks (POST /v1/check) at once, counted from the moment "
                            "an upload starts; more get a 429 at once, before their upload is read")
    max_check_bytes: ByteSize = Field("512MiB", ge=1000, description="the largest body of POST /v1/check (the model "
                                      "file, its form fields and the multipart framing): a larger one is a 413, "
                                      "refused before it is read if its Content-Length says so, else as soon as it "
                                      "crosses the cap (this body's cap instead of max_body_bytes)")
    check_upload_timeout_s: float = Field(120.0, gt=0, le=86_400, description="the whole upload of POST /v1/check "
                                          "must arrive within this (instead of body_timeout_s), else a 408: its "
                                          "check slot and temporary file are freed")
    check_tmp_dir: Path | None = Field(None, description="where an upload is written while it is checked, in a "
                                       "private subdirectory of its own (mode 0700) removed after the answer; must "
                                       "lie outside the store; none: the system's temporary directory")
    max_check_unpacked: ByteSize | None = Field(None, ge=1, description="the most bytes the members of an uploaded zip "
                                                "(.pt, .npz) may unpack to, or it is refused before it is unpacked, "
                                                "as a zip bomb (a 422); none: max_check_bytes (a zip unpacks to at "
                                                "most as much as the largest upload)")
    max_check_layers: int = Field(5_000, ge=1, le=10_000_000, description="the most layers of 3x3 filters an uploaded "
                                  "model may hold, counted from its weights' shapes before anything is computed, or "
                                  "it is refused (a 422); real models have at most a few hundred")
    max_check_filters: int = Field(20_000_000, ge=1, le=10_000_000_000, description="the most 3x3 filters an "
                                   "uploaded model may hold (720 MB as float32; VGG-16 has 1.6 million), counted "
                                   "before anything is computed, or it is refused (a 422)")
    max_check_work: int = Field(10**12, ge=1, description="the most multiply-adds an uploaded model's layer "
                                "orthogonality may take (every pair of a layer's output channels: out^2 x (in x 9 + "
                                "256)), counted from its shapes before anything is computed, or it is refused (a 422); "
                                "about 30 s on 2 cores; a wide ResNet-101 takes 6e10")
    max_checks_per_client: int = Field(1, ge=1, le=64, description="checks at once from one client address (behind a "
                                       "proxy every client has its address: raise it to max_checks); more get a 429")
    check_min_upload_bytes_per_s: int = Field(65_536, ge=0, description="once an upload of POST /v1/check has run "
                                              "for check_upload_grace_s, its average rate since its start must stay "
                                              "at least this, else a 408 (its check slot and temporary file freed): "
                                              "slow uploads cannot hold the check slots; 0: no minimum")
    check_upload_grace_s: float = Field(10.0, ge=0, le=86_400, description="how long an upload of POST /v1/check "
                                        "runs before check_min_upload_bytes_per_s applies")

    # Requests
    max_body_bytes: int = Field(1_000_000, ge=1000, description="a larger request body is a 413, refused before it is read")
    body_timeout_s: float = Field(30.0, gt=0, le=3600, description="a request body not received within this is a 408")
    max_connections: int = Field(1000, ge=1, le=100_000, description="open connections (per worker process); at the cap the "
                                 "one waiting longest for a request head is closed, or, if none waits, the new one gets "
                                 "a 503 (service/connections.py)")
    max_connections_per_client: int = Field(100, ge=1, le=100_000, description="open connections per client address; "
                                            "more are answered 503 and closed at once (behind a proxy: raise it)")
    max_requests: int = Field(500, ge=1, le=100_000, description="requests in progress at once (idle connections do "
                                                                 "not count); more get a 503")
    header_timeout_s: float = Field(10.0, gt=0, le=3600, description="a connection that has not sent a complete request "
                                                                     "head this long after its first byte (or its "
                                                                     "opening) is closed (with a 408 if part of a "
                                                                     "head came)")
    keep_alive_timeout_s: float = Field(5.0, gt=0, le=3600, description="an idle connection between requests is "
                                                                        "closed after this long")

    # Paging and response sizes
    page_default: int = Field(50, ge=1, description="page size of lists when a request gives no limit")
    page_max: int = Field(1000, ge=1, description="the largest page a request may ask for")
    filters_json_max: int = Field(100_000, ge=1, description="largest page of filters as JSON")
    field_values_max: int = Field(1000, ge=1, description="distinct values listed per field in /v1/fields")

    @field_validator("check_tmp_dir")
    @classmethod
    def _outside_the_store(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        """Nothing of a check is ever written in the store: a check_tmp_dir inside it is refused."""
        db = info.data.get("db")
        if value is not None and db is not None:
            base, store = Path(value).resolve(), Path(db).resolve()
            if base == store or store in base.parents:
                raise ValueError(f"{base} lies inside the store {store}: give a directory outside it")
        return value

    @model_validator(mode="after")
    def _unpacked_follows_the_upload(self) -> Settings:
        """max_check_unpacked not given: max_check_bytes (shown so in /v1/stats)."""
        if self.max_check_unpacked is None:
            self.max_check_unpacked = ByteSize(int(self.max_check_bytes))
        return self


# The limits in force: every setting but where the store is. `serve` takes each as a flag, and
# /v1/stats shows them all (cnnfilterdb/cli.py, service/routers/meta.py).
LIMITS = tuple(name for name in Settings.model_fields if name != "db")
