-- Catalog layout 4 -> 5, run on a new catalog after schema.sql and by the first commit of this
-- program on a layout-4 store (store.py); a layout-4 catalog stays readable until then.
--
-- The catalog's tables as Parquet files inside the store, for any engine (Spark SQL, Polars, any
-- Parquet reader; docs/method.md#parquet-tables, cnnfilterdb/tables.py): each commit writes one
-- directory of them for its version, immutable like the shards, and records every file here.
CREATE TABLE _tables (
    version INTEGER NOT NULL,           -- the store version the file shows
    name    VARCHAR NOT NULL,           -- models, layers, layers_with_models, basis, versions, shards, layer_moments
    path    VARCHAR PRIMARY KEY,        -- relative to the store directory: tables/<dir>/<name>.parquet
    n_rows  BIGINT NOT NULL,
    bytes   BIGINT NOT NULL,
    sha256  VARCHAR NOT NULL            -- hex, of the whole file as written (cnnfilterdb verify)
);
UPDATE _store SET schema_version = 5;
