-- Tables of the catalog (<db>/catalog.duckdb).
-- The layout version of this file: a program refuses a catalog of another version (catalog.py).
-- store_id names the store (a random UUID given when it was created): "store <id>, version 7"
-- identifies a result across copies and other stores. The id floors: ids are never reused, not
-- even after `compact` has forgotten every row that held them (a cited id keeps its meaning).
CREATE TABLE _store (schema_version INTEGER NOT NULL, store_id VARCHAR NOT NULL,
                     min_next_model_id BIGINT NOT NULL, min_next_layer_id BIGINT NOT NULL,
                     min_next_filter_id BIGINT NOT NULL);
INSERT INTO _store VALUES (4, uuid()::VARCHAR, 0, 0, 0);
-- The public SQL surface is docs/method.md#tables: models, layers, filters and basis, views of the
-- current store version (views.sql), and models_at(v), layers_at(v), layers_with_models_at(v):
-- the same at any kept store version v. Tables whose names start with an underscore are
-- bookkeeping of the store, not public surface.
--
-- Store versions. Every commit (an ingest, a relabelling, a removal) is a numbered version.
-- Nothing a version can see is ever changed in place: a model's metadata is a row per span of
-- versions (version_from <= v < version_to), a layer is present while its model is, the shards
-- and moments are immutable, and each basis is kept with its histograms. So a question asked of
-- version v reads exactly what it read when v was current (`as_of`).
CREATE TABLE _versions (
    version        INTEGER PRIMARY KEY,       -- 1, 2, ...: one per commit
    committed_at   TIMESTAMP NOT NULL,        -- UTC
    action         VARCHAR NOT NULL,          -- ingest | label | remove | refresh (catalog.ACTIONS)
    summary        VARCHAR NOT NULL,          -- what it added or changed, in words
    models_added   INTEGER NOT NULL,
    models_changed INTEGER NOT NULL,          -- relabelled
    models_removed INTEGER NOT NULL,
    n_models       INTEGER NOT NULL,          -- present at this version
    n_filters      BIGINT NOT NULL,
    basis_version  INTEGER,                   -- the global basis of this version (null: fewer than 2 filters)
    compacted      BOOLEAN NOT NULL DEFAULT false  -- its history reclaimed by `cnnfilterdb compact`
);

-- Every version of every model's metadata. model_id is unique among the rows of one version.
CREATE TABLE _models (
    model_id            INTEGER NOT NULL,
    model               VARCHAR NOT NULL,          -- unique string id of the model (among one version's)
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
    extra               JSON,                      -- any other original column
    version_added       INTEGER NOT NULL,          -- the store version that ingested the model
    version_from        INTEGER NOT NULL,          -- this row holds from this version ...
    version_to          INTEGER,                   -- ... to the one before this (null: still current)
    PRIMARY KEY (model_id, version_from)
);

-- Every layer ever ingested (immutable); a layer is in a version when its model is.
CREATE TABLE _layers (
    layer_id                INTEGER PRIMARY KEY,
    model_id                INTEGER NOT NULL,
    conv_depth              INTEGER NOT NULL,
    conv_depth_norm         DOUBLE NOT NULL,
    depth_bin               VARCHAR NOT NULL,      -- depth_bin(conv_depth_norm), see macros.sql
    filter_id_first         BIGINT NOT NULL,
    filter_id_last          BIGINT NOT NULL,       -- inclusive
    n_filters               BIGINT NOT NULL,
    in_channels             INTEGER,               -- null where unknown (dataset.h5)
    out_channels            INTEGER,
    groups                  INTEGER,
    sparsity                DOUBLE,                -- quality metrics, docs/method.md#layer-quality
    variance_entropy        DOUBLE,
    variance_entropy_norm   DOUBLE,
    variance_entropy_clean  DOUBLE,
    orthogonality           DOUBLE
);

-- Every global PCA basis (docs/method.md#basis) a kept store version uses; a new one is fitted when the
-- store's filters change (not when metadata does). The view basis is the current one.
CREATE TABLE _basis (
    version                  INTEGER PRIMARY KEY,
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

-- Per-layer coefficient histograms under each kept basis, for the default parameters (global
-- basis, DEFAULT_BINS bins over the basis range): counts add across layers, so the histograms of
-- any grouping of whole layers are sums of these. They live in an immutable .npy file beside
-- the shards (memory-mapped on first use: no read through the catalog), written by the ingest
-- before its commit: int64 (n_layers + 1, 1 + 9 * bins), prefix sums over the layers in layer_id
-- order: row k + 1 holds the k-th layer's layer_id, then the (9, bins) counts of layers 0..k summed;
-- row 0 is (-1, zeros). A layer's own counts are the difference of its row and the one before.
CREATE TABLE _layer_histograms (
    basis_version INTEGER PRIMARY KEY,
    bins          INTEGER NOT NULL,
    n_layers      INTEGER NOT NULL,
    path          VARCHAR NOT NULL,     -- relative to the store directory
    bytes         BIGINT NOT NULL,
    sha256        VARCHAR NOT NULL      -- hex, of the whole file as written (cnnfilterdb verify)
);

-- The Parquet files behind the filters view, relative to the store directory: those of every
-- kept version (a row group holding only layers a version lacks is skipped by its statistics).
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
    version      INTEGER NOT NULL,     -- the store version it committed
    source       VARCHAR NOT NULL,
    kind         VARCHAR NOT NULL,
    sha256       VARCHAR,
    committed_at TIMESTAMP NOT NULL,
    n_models     INTEGER NOT NULL,
    n_filters    BIGINT NOT NULL,
    PRIMARY KEY (ingest_id, source)
);
