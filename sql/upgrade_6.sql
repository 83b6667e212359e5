-- Catalog layout 5 -> 6, run on a new catalog after schema.sql and upgrade_5.sql, and by the first
-- commit of this program on a layout-5 store (store.py); a layout-5 catalog stays readable until
-- then (its reads unchecked). That commit records the checksums of every shard it keeps, after
-- checking each shard's sha256 against _shards (cnnfilterdb/checksums.py).
--
-- A checksum per row group of every shard, which the engine's reads check before decoding it
-- (docs/method.md#checksums): xxh3_64 of the row group's bytes in the file, the span of its column
-- chunks (every page header and page); row_group -1 is the shard's footer.
CREATE TABLE _row_groups (
    path        VARCHAR NOT NULL,       -- the shard, relative to the store (_shards.path)
    row_group   INTEGER NOT NULL,       -- its index in the shard's footer; -1: the footer itself
    byte_offset BIGINT NOT NULL,        -- where its bytes start in the file
    byte_length BIGINT NOT NULL,
    xxh3        BIGINT NOT NULL,        -- xxh3_64 of those bytes, the unsigned value's bits as BIGINT
    PRIMARY KEY (path, row_group)
);
UPDATE _store SET schema_version = 6;
