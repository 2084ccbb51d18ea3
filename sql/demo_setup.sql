-- m3ret demo, part 1 (run by scripts/demo.sh before m3ret-load and sql/demo.sql):
-- a fresh extension and the default model. psql variable:
--   :model_file  the default model (models/m3ret-default.safetensors)

SET client_min_messages = warning;
DROP EXTENSION IF EXISTS m3ret CASCADE;
DROP TABLE IF EXISTS studies, clinical, corpus, pacs, radiology_reports;
CREATE EXTENSION m3ret;

\echo '== import the default model (stored in the database: dumps and replicas carry it)'
SELECT m3ret_model_import('m3ret-default', pg_read_binary_file(:'model_file')) AS imported;
SELECT m3ret_model_set_default('m3ret-default') AS default_model;
SELECT model, method, preset, dims, size FROM m3ret_model_list;
