-- Macros persisted in the catalog: usable in the DuckDB shell as in the service.

-- docs/method.md#groupings: conv_depth_norm cut into ten bins '[0.0, 0.1]', '(0.1, 0.2]', ..., '(0.9, 1.0]'.
-- Compared against the decimal literals so that 0.3 falls in '(0.2, 0.3]' (no x*10 rounding).
CREATE OR REPLACE MACRO depth_bin(x) AS CASE
    WHEN x IS NULL THEN NULL
    WHEN x <= 0.1 THEN '[0.0, 0.1]'
    WHEN x <= 0.2 THEN '(0.1, 0.2]'
    WHEN x <= 0.3 THEN '(0.2, 0.3]'
    WHEN x <= 0.4 THEN '(0.3, 0.4]'
    WHEN x <= 0.5 THEN '(0.4, 0.5]'
    WHEN x <= 0.6 THEN '(0.5, 0.6]'
    WHEN x <= 0.7 THEN '(0.6, 0.7]'
    WHEN x <= 0.8 THEN '(0.7, 0.8]'
    WHEN x <= 0.9 THEN '(0.8, 0.9]'
    ELSE '(0.9, 1.0]'
END;

-- SPEC 14's depth_decile: '0' for a model's first convolution layer (conv_depth 0), otherwise
-- pandas.cut(conv_depth_norm, numpy.linspace(0, 1, 11)) with its labels '(0.0, 0.1]', ..., '(0.9, 1.0]':
-- compared against linspace's own doubles (0.30000000000000004 is its fourth edge), so that every
-- value falls where pandas puts it.
CREATE OR REPLACE MACRO depth_decile(conv_depth, x) AS CASE
    WHEN conv_depth IS NULL OR x IS NULL THEN NULL
    WHEN conv_depth = 0 THEN '0'
    WHEN x <= 0.0 OR x > 1.0 THEN NULL
    WHEN x <= 0.1 THEN '(0.0, 0.1]'
    WHEN x <= 0.2 THEN '(0.1, 0.2]'
    WHEN x <= 0.30000000000000004 THEN '(0.2, 0.3]'
    WHEN x <= 0.4 THEN '(0.3, 0.4]'
    WHEN x <= 0.5 THEN '(0.4, 0.5]'
    WHEN x <= 0.6000000000000001 THEN '(0.5, 0.6]'
    WHEN x <= 0.7000000000000001 THEN '(0.6, 0.7]'
    WHEN x <= 0.8 THEN '(0.7, 0.8]'
    WHEN x <= 0.9 THEN '(0.8, 0.9]'
    ELSE '(0.9, 1.0]'
END;

-- A filter's nine weights as a 3x3 array, row-major: as_3x3(w)[r][c] (1-based, as in SQL).
CREATE OR REPLACE MACRO as_3x3(w) AS [w[1:3], w[4:6], w[7:9]];

-- The store at any kept version v: models_at(v), layers_at(v), layers_with_models_at(v).
-- `sample` marks the models of the synthetic sample (`cnnfilterdb demo`; ingest/h5.py).
CREATE OR REPLACE MACRO models_at(v) AS TABLE
SELECT * EXCLUDE (version_from, version_to), starts_with(source, 'SAMPLE') AS sample FROM _models
WHERE version_from <= v AND (version_to IS NULL OR version_to > v);

CREATE OR REPLACE MACRO layers_at(v) AS TABLE
SELECT l.* FROM _layers l SEMI JOIN models_at(v) m USING (model_id);

-- Layers with their model's metadata: the usual starting point of a grouping. The model
-- properties (columns of _models beyond the built-in ones: cnnfilterdb/properties.py) follow, in
-- the order they were added: every column of models_at(v) but those excluded here.
CREATE OR REPLACE MACRO layers_with_models_at(v) AS TABLE
SELECT l.*, depth_decile(l.conv_depth, l.conv_depth_norm) AS depth_decile, m.model, m.name, m.task, m.task_raw, m.visual_category, m.training_dataset,
       m.pretraining_dataset, m.producer, m.source, m.sample,
       m.sha256, m.version_added,
       m.* EXCLUDE (model_id, model, name, task, task_raw, visual_category, training_dataset, pretraining_dataset,
                    producer, op_set, depth, paper, accessible, dataset_url, total_filters, filter_share_3x3,
                    n_filters, n_layers, source, sha256, kernel_counts, op_counts, extra, version_added, sample)
FROM _layers l JOIN models_at(v) m USING (model_id);
