-- One shard of a table spread over several servers with PostgreSQL's own engine
-- (README: "Sharding over postgres_fdw"). Run on each shard, in the database the
-- coordinator's servers name, with its partition number and the embedding's
-- dimensions:
--   psql -d warehouse -v part=0 -v dims=64 -f sql/examples/sharding_shard.sql
-- tests/tests/sharding.rs runs this file and sharding_coordinator.sql.

CREATE EXTENSION IF NOT EXISTS m3ret;

-- The partition's rows and their own index: each shard searches only its rows.
CREATE TABLE studies_p:part (id int PRIMARY KEY, emb embedding(:dims));
CREATE INDEX ON studies_p:part USING m3ret_hnsw (emb);
