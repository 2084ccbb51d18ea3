-- The coordinator of a table spread over two shard servers (README: "Sharding over
-- postgres_fdw"); each shard first ran sharding_shard.sql. Run once, with the
-- shards' addresses, the user the coordinator connects as, and the dimensions:
--   psql -d warehouse -v host0=shard0.example -v port0=5432 \
--        -v host1=shard1.example -v port1=5432 -v shard_user=m3ret_reader \
--        -v dims=64 -f sql/examples/sharding_coordinator.sql
-- More shards: one server, user mapping and partition each, and MODULUS N.

CREATE EXTENSION IF NOT EXISTS m3ret;
CREATE EXTENSION IF NOT EXISTS postgres_fdw;

-- extensions 'm3ret': the shards may be sent `<=>` and `embedding` values, so
-- each sorts its own rows; async_capable: the shards of one query work at once.
CREATE SERVER shard0 FOREIGN DATA WRAPPER postgres_fdw
    OPTIONS (host :'host0', port :'port0', dbname 'warehouse', extensions 'm3ret',
             async_capable 'true');
CREATE SERVER shard1 FOREIGN DATA WRAPPER postgres_fdw
    OPTIONS (host :'host1', port :'port1', dbname 'warehouse', extensions 'm3ret',
             async_capable 'true');
CREATE USER MAPPING FOR CURRENT_USER SERVER shard0 OPTIONS (user :'shard_user');
CREATE USER MAPPING FOR CURRENT_USER SERVER shard1 OPTIONS (user :'shard_user');

-- Rows inserted or copied here go to their shard by the hash of the id.
CREATE TABLE studies (id int, emb embedding(:dims)) PARTITION BY HASH (id);
CREATE FOREIGN TABLE studies_p0 PARTITION OF studies
    FOR VALUES WITH (MODULUS 2, REMAINDER 0) SERVER shard0 OPTIONS (table_name 'studies_p0');
CREATE FOREIGN TABLE studies_p1 PARTITION OF studies
    FOR VALUES WITH (MODULUS 2, REMAINDER 1) SERVER shard1 OPTIONS (table_name 'studies_p1');

-- The queries, with $1 the query vector (or the query image: see the README):
--
-- exact merge, but each shard sorts all its rows (no LIMIT crosses a Merge Append):
--   SELECT id FROM studies ORDER BY emb <=> $1 LIMIT 10;
--
-- each shard gets its own LIMIT and answers from its index; the coordinator merges:
--   SELECT id FROM (
--       (SELECT id, emb <=> $1 AS d FROM studies_p0 ORDER BY d LIMIT 10) UNION ALL
--       (SELECT id, emb <=> $1 AS d FROM studies_p1 ORDER BY d LIMIT 10)) AS nearest
--   ORDER BY d LIMIT 10;
--
-- a query image, embedded once here and sent to the shards as a parameter:
--   WITH q AS MATERIALIZED (SELECT m3ret_embed($1, 'xray') AS e)
--   SELECT id FROM (
--       (SELECT id, emb <=> (SELECT e FROM q) AS d FROM studies_p0 ORDER BY d LIMIT 10) UNION ALL
--       (SELECT id, emb <=> (SELECT e FROM q) AS d FROM studies_p1 ORDER BY d LIMIT 10)) AS nearest
--   ORDER BY d LIMIT 10;
