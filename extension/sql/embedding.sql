-- The embedding type: a float4 vector whose on-disk and binary forms are those of
-- pgvector's `vector`, so drivers that speak pgvector speak embedding.

CREATE TYPE embedding;

CREATE FUNCTION embedding_in(cstring, oid, integer) RETURNS embedding
    AS 'MODULE_PATHNAME', 'embedding_in_wrapper' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION embedding_out(embedding) RETURNS cstring
    AS 'MODULE_PATHNAME', 'embedding_out_wrapper' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION embedding_typmod_in(cstring[]) RETURNS integer
    AS 'MODULE_PATHNAME', 'embedding_typmod_in_wrapper' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION embedding_recv(internal, oid, integer) RETURNS embedding
    AS 'MODULE_PATHNAME', 'embedding_recv_wrapper' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION embedding_send(embedding) RETURNS bytea
    AS 'MODULE_PATHNAME', 'embedding_send_wrapper' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE TYPE embedding (
    INPUT     = embedding_in,
    OUTPUT    = embedding_out,
    TYPMOD_IN = embedding_typmod_in,
    RECEIVE   = embedding_recv,
    SEND      = embedding_send,
    STORAGE   = external
);
COMMENT ON TYPE embedding IS 'float4 vector of 1 to 16000 dimensions, text form [1,2.5,-3]; layout identical to pgvector''s vector';

-- Distances. The operators are what queries and indexes use.
CREATE FUNCTION cosine_distance(embedding, embedding) RETURNS double precision
    AS 'MODULE_PATHNAME', 'embedding_cosine_distance_wrapper' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION cosine_distance(embedding, embedding) IS '1 - cosine similarity, in [0, 2]; NaN if either is a zero vector (operator <=>)';
CREATE FUNCTION l2_distance(embedding, embedding) RETURNS double precision
    AS 'MODULE_PATHNAME', 'embedding_l2_distance_wrapper' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION l2_distance(embedding, embedding) IS 'Euclidean distance (operator <->)';
CREATE FUNCTION inner_product(embedding, embedding) RETURNS double precision
    AS 'MODULE_PATHNAME', 'embedding_inner_product_wrapper' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION inner_product(embedding, embedding) IS 'inner product (the operator <#> is its negative)';
CREATE FUNCTION embedding_negative_inner_product(embedding, embedding) RETURNS double precision
    AS 'MODULE_PATHNAME', 'embedding_negative_inner_product_wrapper' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION embedding_negative_inner_product(embedding, embedding) IS 'negative inner product, smaller is closer (operator <#>)';

CREATE OPERATOR <=> (LEFTARG = embedding, RIGHTARG = embedding, FUNCTION = cosine_distance, COMMUTATOR = '<=>');
CREATE OPERATOR <-> (LEFTARG = embedding, RIGHTARG = embedding, FUNCTION = l2_distance, COMMUTATOR = '<->');
CREATE OPERATOR <#> (LEFTARG = embedding, RIGHTARG = embedding, FUNCTION = embedding_negative_inner_product, COMMUTATOR = '<#>');

CREATE FUNCTION embedding_dims(embedding) RETURNS integer
    AS 'MODULE_PATHNAME', 'embedding_dims_wrapper' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION embedding_dims(embedding) IS 'number of dimensions';
CREATE FUNCTION l2_normalize(embedding) RETURNS embedding
    AS 'MODULE_PATHNAME', 'embedding_l2_normalize_wrapper' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION l2_normalize(embedding) IS 'the embedding scaled to unit length (a zero vector stays zero)';

-- Casts. embedding(embedding, integer, boolean) is the length coercion that enforces
-- embedding(n) on assignment.
CREATE FUNCTION embedding(embedding, integer, boolean) RETURNS embedding
    AS 'MODULE_PATHNAME', 'embedding_typmod_cast_wrapper' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION array_to_embedding(real[], integer, boolean) RETURNS embedding
    AS 'MODULE_PATHNAME', 'embedding_from_real_array_wrapper' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION array_to_embedding(double precision[], integer, boolean) RETURNS embedding
    AS 'MODULE_PATHNAME', 'embedding_from_double_array_wrapper' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION embedding_to_real_array(embedding, integer, boolean) RETURNS real[]
    AS 'MODULE_PATHNAME', 'embedding_to_real_array_wrapper' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE CAST (embedding AS embedding) WITH FUNCTION embedding(embedding, integer, boolean) AS IMPLICIT;
CREATE CAST (real[] AS embedding) WITH FUNCTION array_to_embedding(real[], integer, boolean) AS ASSIGNMENT;
CREATE CAST (double precision[] AS embedding) WITH FUNCTION array_to_embedding(double precision[], integer, boolean) AS ASSIGNMENT;
CREATE CAST (embedding AS real[]) WITH FUNCTION embedding_to_real_array(embedding, integer, boolean) AS IMPLICIT;
