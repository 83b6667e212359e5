-- Views of the catalog, rewritten by the store writer at each commit (the macros they use,
-- models_at(v) and the like, are in macros.sql):
-- {version} is the store version they show, {basis_version} its global basis (NULL: none),
-- {filters_source} the list of Parquet shards, relative to the store directory (a store can be
-- copied or moved): a reader resolves them with `SET file_search_path = '<store>'`, or by running
-- from the store directory; {filters_condition} leaves out the filters of models no longer in
-- the store (their shards stay for older versions until `cnnfilterdb compact`).

-- The current version.
CREATE OR REPLACE VIEW models AS FROM models_at({version});
CREATE OR REPLACE VIEW layers AS FROM layers_at({version});
CREATE OR REPLACE VIEW layers_with_models AS FROM layers_with_models_at({version});
CREATE OR REPLACE VIEW basis AS SELECT * FROM _basis WHERE version IS NOT DISTINCT FROM {basis_version};
CREATE OR REPLACE VIEW versions AS SELECT * FROM _versions ORDER BY version;

-- Every stored filter, of any kept version (the engine selects them by layer, at a version).
CREATE OR REPLACE VIEW _all_filters AS
SELECT filter_id, model_id, layer_id, w0, w1, w2, w3, w4, w5, w6, w7, w8
FROM {filters_source};

-- The filters of any kept version v (of the layers present at v).
CREATE OR REPLACE MACRO filters_at(v) AS TABLE
SELECT f.* FROM _all_filters f SEMI JOIN layers_at(v) l USING (layer_id);

CREATE OR REPLACE VIEW filters AS
SELECT *, [w0, w1, w2, w3, w4, w5, w6, w7, w8]::FLOAT[9] AS w
FROM _all_filters
WHERE {filters_condition};
