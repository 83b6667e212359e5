-- Views of the catalog. {filters_source} is replaced by the store writer with the list of
-- Parquet shards, relative to the store directory (a store can be copied or moved): a reader
-- resolves them with `SET file_search_path = '<store>'`, or by running from the store directory.

CREATE OR REPLACE VIEW filters AS
SELECT
    filter_id, model_id, layer_id,
    w0, w1, w2, w3, w4, w5, w6, w7, w8,
    [w0, w1, w2, w3, w4, w5, w6, w7, w8]::FLOAT[9] AS w
FROM {filters_source};

-- Layers with their model's metadata: the usual starting point of a grouping.
CREATE OR REPLACE VIEW layers_with_models AS
SELECT l.*, m.model, m.name, m.task, m.task_raw, m.visual_category, m.training_dataset,
       m.pretraining_dataset, m.producer
FROM layers l JOIN models m USING (model_id);
