-- m3ret_hnsw: an HNSW index access method stored in PostgreSQL pages.

CREATE FUNCTION m3ret_hnsw_handler(internal) RETURNS index_am_handler
    AS 'MODULE_PATHNAME', 'm3ret_hnsw_handler_wrapper' LANGUAGE C;

CREATE ACCESS METHOD m3ret_hnsw TYPE INDEX HANDLER m3ret_hnsw_handler;
COMMENT ON ACCESS METHOD m3ret_hnsw IS
    'HNSW graph index for ORDER BY embedding <=> / <-> / <#> query LIMIT k; options m (2-100, default 16) and ef_construction (4-1000, default 64)';

-- Support function 1 of each operator class tells the index which distance it orders by.
CREATE FUNCTION m3ret_hnsw_l2_support(internal) RETURNS integer
    AS 'MODULE_PATHNAME', 'm3ret_hnsw_l2_support_wrapper' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION m3ret_hnsw_ip_support(internal) RETURNS integer
    AS 'MODULE_PATHNAME', 'm3ret_hnsw_ip_support_wrapper' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION m3ret_hnsw_cosine_support(internal) RETURNS integer
    AS 'MODULE_PATHNAME', 'm3ret_hnsw_cosine_support_wrapper' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE OPERATOR CLASS embedding_cosine_ops DEFAULT FOR TYPE embedding USING m3ret_hnsw AS
    OPERATOR 1 <=> (embedding, embedding) FOR ORDER BY float_ops,
    FUNCTION 1 m3ret_hnsw_cosine_support(internal);

CREATE OPERATOR CLASS embedding_l2_ops FOR TYPE embedding USING m3ret_hnsw AS
    OPERATOR 1 <-> (embedding, embedding) FOR ORDER BY float_ops,
    FUNCTION 1 m3ret_hnsw_l2_support(internal);

CREATE OPERATOR CLASS embedding_ip_ops FOR TYPE embedding USING m3ret_hnsw AS
    OPERATOR 1 <#> (embedding, embedding) FOR ORDER BY float_ops,
    FUNCTION 1 m3ret_hnsw_ip_support(internal);

CREATE FUNCTION m3ret_hnsw_check(index regclass)
    RETURNS TABLE (elements bigint, live bigint, dead bigint, freed bigint, unreachable bigint, entry_level integer, problems text[])
    AS 'MODULE_PATHNAME', 'm3ret_hnsw_check_wrapper' LANGUAGE C STRICT;
COMMENT ON FUNCTION m3ret_hnsw_check(regclass) IS
    'Verifies an m3ret_hnsw index: every link points at a live element of a high enough level, the entry element is valid, every live row of the table is indexed exactly once. Returns counts (live: rows indexed; dead: rows deleted but not yet vacuumed; freed: space awaiting reuse; unreachable: elements no search can reach from the entry element) and the problems found (empty when sound). Table owner only; takes a SHARE lock on the table.';
