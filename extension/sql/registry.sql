-- The model registry: model files stored in the database (so dumps, backups and
-- replicas carry them), versioned by name, one of them the default.

-- Roles are cluster-wide: another database may have created it (even concurrently).
DO $$ BEGIN
    CREATE ROLE m3ret_admin NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END $$;

CREATE TABLE m3ret_models (
    name       text        NOT NULL CHECK (name ~ '^[A-Za-z0-9_.-]+$'),
    version    integer     NOT NULL CHECK (version > 0),
    sha256     text        NOT NULL,
    config     jsonb       NOT NULL,
    dims       integer     NOT NULL,
    weights    bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    created_by name        NOT NULL DEFAULT current_user,
    is_default boolean     NOT NULL DEFAULT false,
    PRIMARY KEY (name, version),
    UNIQUE (name, sha256)
);
ALTER TABLE m3ret_models ALTER COLUMN weights SET STORAGE EXTERNAL;
CREATE UNIQUE INDEX m3ret_models_one_default ON m3ret_models ((true)) WHERE is_default;
COMMENT ON TABLE m3ret_models IS 'm3ret model versions: immutable; import with m3ret_model_import, list with m3ret_model_list';
SELECT pg_catalog.pg_extension_config_dump('m3ret_models', '');

-- The last version each name was given, kept when its versions are dropped: a
-- version number names one file for good, so an index on m3ret_embed_pinned(...,
-- 'name@3') can never come to hold the vectors of another file.
CREATE TABLE m3ret_model_names (
    name         text    PRIMARY KEY,
    last_version integer NOT NULL CHECK (last_version > 0)
);
COMMENT ON TABLE m3ret_model_names IS 'the last version number given to each model name, dropped or not (never reused)';
SELECT pg_catalog.pg_extension_config_dump('m3ret_model_names', '');
REVOKE ALL ON m3ret_model_names FROM PUBLIC;
GRANT SELECT ON m3ret_model_names TO PUBLIC;

-- Weights are sensitive (a model trained on patients' images can leak them): only
-- superusers and m3ret_admin read that column. Everyone may still embed: the
-- extension reads the weights with the table owner's rights (registry.rs).
REVOKE ALL ON m3ret_models FROM PUBLIC;
GRANT SELECT (name, version, sha256, config, dims, created_at, created_by, is_default)
    ON m3ret_models TO PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON m3ret_models TO m3ret_admin;
GRANT SELECT, INSERT, UPDATE ON m3ret_model_names TO m3ret_admin;

CREATE VIEW m3ret_model_list AS
    SELECT name, version, name || '@' || version AS model, sha256, dims,
           config->>'method' AS method, config->>'preset' AS preset, config->>'pooling' AS pooling,
           pg_size_pretty(octet_length(weights)::bigint) AS size, created_at, created_by, is_default
    FROM m3ret_models;
COMMENT ON VIEW m3ret_model_list IS 'the imported models, without their weights';
GRANT SELECT ON m3ret_model_list TO PUBLIC;

-- Every function below runs with its own search_path (the extension's schema after
-- pg_catalog, pg_temp last so that it is not searched first): a name or operator in
-- its body never resolves to an object of a schema the caller put on theirs.

CREATE FUNCTION m3ret_require_admin(action text) RETURNS void LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, @extschema@, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = current_user
                   AND (rolsuper OR pg_has_role(current_user, 'm3ret_admin', 'MEMBER'))) THEN
        RAISE EXCEPTION 'permission denied to %: only superusers and members of m3ret_admin may', action
            USING ERRCODE = 'insufficient_privilege';
    END IF;
END $$;

CREATE FUNCTION m3ret_model_import(name text, weights bytea) RETURNS text
LANGUAGE plpgsql VOLATILE STRICT SET search_path = pg_catalog, @extschema@, pg_temp AS $$
DECLARE
    info jsonb;
    v integer;
BEGIN
    PERFORM m3ret_require_admin('import models');
    IF m3ret_model_import.name !~ '^[A-Za-z0-9_.-]+$' THEN
        RAISE EXCEPTION 'invalid model name "%": use letters, digits, "_", "-" and "."', m3ret_model_import.name
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    info := m3ret_model_inspect(weights);
    -- One writer per name at a time, so versions are dense and unique.
    PERFORM pg_advisory_xact_lock(hashtext('m3ret_models:' || m3ret_model_import.name));
    SELECT m.version INTO v FROM m3ret_models m
        WHERE m.name = m3ret_model_import.name AND m.sha256 = info->>'sha256';
    IF FOUND THEN
        RETURN m3ret_model_import.name || '@' || v;   -- the same file again: the same version
    END IF;
    -- After the name's last version ever, dropped or not (the greatest covers rows
    -- restored from a dump taken before m3ret_model_names existed).
    SELECT greatest(coalesce(max(m.version), 0),
                    coalesce((SELECT n.last_version FROM m3ret_model_names n
                              WHERE n.name = m3ret_model_import.name), 0)) + 1
        INTO v FROM m3ret_models m WHERE m.name = m3ret_model_import.name;
    INSERT INTO m3ret_model_names AS n (name, last_version) VALUES (m3ret_model_import.name, v)
        ON CONFLICT ON CONSTRAINT m3ret_model_names_pkey DO UPDATE SET last_version = excluded.last_version;
    INSERT INTO m3ret_models (name, version, sha256, config, dims, weights, is_default)
    VALUES (m3ret_model_import.name, v, info->>'sha256', info->'config', (info->>'dims')::integer, weights,
            NOT EXISTS (SELECT 1 FROM m3ret_models WHERE is_default));
    RETURN m3ret_model_import.name || '@' || v;
END $$;
COMMENT ON FUNCTION m3ret_model_import(text, bytea) IS
    'stores a model file as a new version of name (the same file again returns its existing version); the first model imported becomes the default; returns name@version';

CREATE FUNCTION m3ret_model_resolve(model text, OUT name text, OUT version integer) RETURNS record
LANGUAGE plpgsql STABLE STRICT SET search_path = pg_catalog, @extschema@, pg_temp AS $$
DECLARE
    base text := split_part(model, '@', 1);
    ver text := nullif(split_part(model, '@', 2), '');
BEGIN
    SELECT m.name, m.version INTO name, version FROM m3ret_models m
        WHERE m.name = base AND (ver IS NULL OR m.version = ver::integer)
        ORDER BY m.version DESC LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown model "%": m3ret_model_list shows the imported models', model
            USING ERRCODE = 'undefined_object';
    END IF;
END $$;

CREATE FUNCTION m3ret_model_set_default(model text) RETURNS text
LANGUAGE plpgsql VOLATILE STRICT SET search_path = pg_catalog, @extschema@, pg_temp AS $$
DECLARE
    r record;
BEGIN
    PERFORM m3ret_require_admin('set the default model');
    r := m3ret_model_resolve(model);
    UPDATE m3ret_models SET is_default = false WHERE is_default AND (name, version) <> (r.name, r.version);
    UPDATE m3ret_models SET is_default = true WHERE (name, version) = (r.name, r.version);
    RETURN r.name || '@' || r.version;
END $$;
COMMENT ON FUNCTION m3ret_model_set_default(text) IS
    'makes name@version (or the latest version of name) the model m3ret_embed uses when given none';

CREATE FUNCTION m3ret_model_drop(model text) RETURNS integer
LANGUAGE plpgsql VOLATILE STRICT SET search_path = pg_catalog, @extschema@, pg_temp AS $$
DECLARE
    dropped integer;
    ver text := nullif(split_part(model, '@', 2), '');
BEGIN
    PERFORM m3ret_require_admin('drop models');
    DELETE FROM m3ret_models m
        WHERE m.name = split_part(model, '@', 1) AND (ver IS NULL OR m.version = ver::integer);
    GET DIAGNOSTICS dropped = ROW_COUNT;
    IF dropped = 0 THEN
        RAISE EXCEPTION 'unknown model "%": m3ret_model_list shows the imported models', model
            USING ERRCODE = 'undefined_object';
    END IF;
    RETURN dropped;
END $$;
COMMENT ON FUNCTION m3ret_model_drop(text) IS 'drops name@version, or every version of name; returns how many (their version numbers are never given again)';

REVOKE EXECUTE ON FUNCTION m3ret_model_import(text, bytea), m3ret_model_set_default(text), m3ret_model_drop(text),
    m3ret_model_import_file(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION m3ret_model_import(text, bytea), m3ret_model_set_default(text), m3ret_model_drop(text),
    m3ret_model_import_file(text, text) TO m3ret_admin;
