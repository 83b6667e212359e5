-- Catalog layout 7 -> 8, run on a new catalog after the upgrades before it, and by the first commit of
-- this program on a layout-7 store (store.py); a layout-7 catalog stays readable until then.
--
-- Each store version records a digest of what it holds (cnnfilterdb/digest.py: a sha256 over its models,
-- layers, layer moments, basis and histogram segments, in a canonical text), computed by its commit, so
-- that a citation "store <id>, version N" can be checked against a copy (docs/versions.md#citing-a-version)
-- and `cnnfilterdb verify` recomputes it. NULL for the versions committed before layout 8: nothing
-- recorded then what they held, and a digest computed now would certify whatever the catalog holds today.
ALTER TABLE _versions ADD COLUMN digest VARCHAR;
UPDATE _store SET schema_version = 8;
