-- Catalog layout 6 -> 7, run on a new catalog after the upgrades before it, and by the first commit of
-- this program on a layout-6 store (store.py); a layout-6 catalog stays readable until then.
--
-- The stored histograms of a basis in segments (cnnfilterdb/segments.py, docs/method.md#stored-histograms):
-- the commit that fits a basis writes one segment for every layer of its version; a later commit that
-- keeps the basis and adds layers writes one for those (their filters projected on the basis), so a
-- small commit reads only its own filters. A store version uses the segments of its basis written at
-- or before it. A layout-6 file (one per basis, per-layer prefix sums, .npy) becomes its basis's one
-- segment, without the fine and 2-D histograms (those analyses scan until the next refit).
CREATE TABLE _histograms (
    path          VARCHAR PRIMARY KEY,  -- relative to the store directory: shards/<ingest id>-histograms.npz
    basis_version INTEGER NOT NULL,
    store_version INTEGER NOT NULL,     -- the version whose commit wrote it
    n_layers      INTEGER NOT NULL,
    bins          INTEGER NOT NULL,     -- per-layer bins (DEFAULT_BINS)
    fine_bins     INTEGER,              -- per unit (model, depth bin); null: a layout-6 file, none
    density_bins  INTEGER,              -- per model, of (c0, c1) over DENSITY_RANGE; null: none
    bytes         BIGINT NOT NULL,
    sha256        VARCHAR NOT NULL      -- hex, of the whole file as written (cnnfilterdb verify)
);
INSERT INTO _histograms
SELECT h.path, h.basis_version,
       coalesce((SELECT min(v.version) FROM _versions v WHERE v.basis_version = h.basis_version), 0),
       h.n_layers, h.bins, NULL, NULL, h.bytes, h.sha256
FROM _layer_histograms h;
DROP TABLE _layer_histograms;
-- The store version whose filters a basis was fitted on (its n_filters): the refit policy compares a
-- version's filters with those (store.py, docs/method.md#refit).
-- And the largest layer id then: a layer of a later version was among the filters of the fit exactly
-- when its id is at most that (ids are never reused, removed models never return), which stays true
-- after `compact` forgot the rows of the fitted version. Null for the bases before: the policy refits.
ALTER TABLE _basis ADD COLUMN store_version INTEGER;
ALTER TABLE _basis ADD COLUMN max_layer_id INTEGER;
UPDATE _basis SET store_version = (SELECT min(v.version) FROM _versions v WHERE v.basis_version = _basis.version);
UPDATE _store SET schema_version = 7;
