-- Tables of the catalog (<db>/catalog.duckdb).
-- The layout version of this file: a program refuses a catalog of another version (store.py).
CREATE TABLE _store (schema_version INTEGER NOT NULL);
INSERT INTO _store VALUES (2);
-- The public SQL surface is SPEC section 4:
-- models, layers, filters (a view over Parquet shards, see views.sql) and basis.
-- Tables whose names start with an underscore are bookkeeping of the store, not public surface.

CREATE TABLE models (
    model_id            INTEGER PRIMARY KEY,
    model               VARCHAR NOT NULL UNIQUE,   -- unique string id of the model
    name                VARCHAR,                   -- architecture name, not unique
    task                VARCHAR,                   -- normalized: every '*Segmentation*' label is 'Segmentation'
    task_raw            VARCHAR,                   -- the label as it was in the source
    visual_category     VARCHAR,
    training_dataset    VARCHAR,
    pretraining_dataset VARCHAR,
    producer            VARCHAR,
    op_set              INTEGER,
    depth               INTEGER,
    paper               VARCHAR,
    accessible          VARCHAR,
    dataset_url         VARCHAR,
    total_filters       BIGINT,                    -- all kernels except 1x1, as in the source
    filter_share_3x3    DOUBLE,                    -- (3, 3) filters / total_filters
    n_filters           BIGINT NOT NULL,           -- 3x3 filters stored
    n_layers            INTEGER NOT NULL,
    source              VARCHAR NOT NULL,          -- the file it came from
    sha256              VARCHAR,                   -- of the source model file, when ingested from one
    kernel_counts       MAP(VARCHAR, BIGINT),      -- '(X, Y) filters' columns: kernel shape -> count
    op_counts           MAP(VARCHAR, BIGINT),      -- operator -> count (ONNX operator names)
    extra               JSON                       -- any other original column
);

CREATE TABLE layers (
    layer_id                INTEGER PRIMARY KEY,
    model_id                INTEGER NOT NULL REFERENCES models (model_id),
    conv_depth              INTEGER NOT NULL,
    conv_depth_norm         DOUBLE NOT NULL,
    depth_bin               VARCHAR NOT NULL,      -- depth_bin(conv_depth_norm), see macros.sql
    filter_id_first         BIGINT NOT NULL,
    filter_id_last          BIGINT NOT NULL,       -- inclusive
    n_filters               BIGINT NOT NULL,
    in_channels             INTEGER,               -- null where unknown (dataset.h5)
    out_channels            INTEGER,
    groups                  INTEGER,
    sparsity                DOUBLE,                -- quality metrics, SPEC 6.4
    variance_entropy        DOUBLE,
    variance_entropy_norm   DOUBLE,
    variance_entropy_clean  DOUBLE,
    orthogonality           DOUBLE
);

-- The current global PCA basis (SPEC 6.1); one row, replaced when the store's content changes.
CREATE TABLE basis (
    version                  INTEGER NOT NULL,
    fitted_at                TIMESTAMP NOT NULL,
    n_filters                BIGINT NOT NULL,
    mean                     DOUBLE[9],
    components               DOUBLE[9][9],         -- rows are components, sorted by variance
    explained_variance       DOUBLE[9],
    explained_variance_ratio DOUBLE[9],
    range_min                DOUBLE,               -- one (min, max) over all 9 coefficients of all filters
    range_max                DOUBLE
);

-- Per-layer first and second moments of the peak-scaled filters. Moments add across layers
-- (Chan et al.), so the global basis is refitted from these without rescanning the filters.
CREATE TABLE _layer_moments (
    layer_id INTEGER PRIMARY KEY,
    n        BIGINT NOT NULL,
    mean     DOUBLE[9] NOT NULL,
    scatter  DOUBLE[81] NOT NULL                   -- sum of outer products of centered rows, row-major 9x9
);

-- Per-layer coefficient histograms under the current basis, for the default parameters (global
-- basis, DEFAULT_BINS bins over the basis range): counts add across layers, so the histograms of
-- any grouping of whole layers are sums of these. They live in an immutable .npy file beside
-- the shards (memory-mapped on first use: no read through the catalog), written by the ingest
-- before its commit: int64 (n_layers + 1, 1 + 9 * bins), prefix sums over the layers in layer_id
-- order: row k + 1 holds the k-th layer's layer_id, then the (9, bins) counts of layers 0..k summed;
-- row 0 is (-1, zeros). A layer's own counts are the difference of its row and the one before.
CREATE TABLE _layer_histograms (
    basis_version INTEGER NOT NULL,
    bins          INTEGER NOT NULL,
    n_layers      INTEGER NOT NULL,
    path          VARCHAR NOT NULL,     -- relative to the store directory
    bytes         BIGINT NOT NULL,
    sha256        VARCHAR NOT NULL      -- hex, of the whole file as written (cnnfilterdb verify)
);

-- The Parquet files behind the filters view, relative to the store directory.
CREATE TABLE _shards (
    path            VARCHAR PRIMARY KEY,
    n_rows          BIGINT NOT NULL,
    filter_id_first BIGINT NOT NULL,
    filter_id_last  BIGINT NOT NULL,
    bytes           BIGINT NOT NULL,
    sha256          VARCHAR NOT NULL    -- hex, of the whole file as written (cnnfilterdb verify)
);

-- One row per source file of each committed ingest.
CREATE TABLE _ingests (
    ingest_id    VARCHAR NOT NULL,
    source       VARCHAR NOT NULL,
    kind         VARCHAR NOT NULL,
    sha256       VARCHAR,
    committed_at TIMESTAMP NOT NULL,
    n_models     INTEGER NOT NULL,
    n_filters    BIGINT NOT NULL,
    PRIMARY KEY (ingest_id, source)
);
