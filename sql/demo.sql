-- m3ret demo, run by scripts/demo.sh against a local cluster.
-- psql variables: :fixtures (folder of sample files), :model_file (a model trained by
-- the demo script). Everything here is plain SQL a warehouse could run.

SET client_min_messages = warning;
DROP EXTENSION IF EXISTS m3ret CASCADE;
DROP TABLE IF EXISTS studies, clinical;
CREATE EXTENSION m3ret;

\echo '== the embedding type'
SELECT '[1,2.5,-3]'::embedding AS literal, embedding_dims('[1,2.5,-3]') AS dims,
       '[1,0]'::embedding <=> '[0,1]' AS cosine_distance;

\echo '== import the model (stored in the database: dumps and replicas carry it)'
SELECT m3ret_model_import('demo', pg_read_binary_file(:'model_file')) AS imported;
SELECT model, method, preset, dims, size, is_default FROM m3ret_model_list;

\echo '== load real sample studies of every modality'
CREATE TABLE studies (
    study_id text PRIMARY KEY,
    modality text NOT NULL,
    finding  text NOT NULL,
    data     bytea NOT NULL,
    emb      embedding
);
INSERT INTO studies (study_id, modality, finding, data) VALUES
    ('xr-1', 'xray',       'pediatric chest, pneumonia', pg_read_binary_file(:'fixtures' || '/pmnist_train_0000.png')),
    ('xr-2', 'xray',       'adult chest, COVID-19',      pg_read_binary_file(:'fixtures' || '/covidrepo_0637.jpg')),
    ('us-1', 'ultrasound', 'lung POCUS clip, COVID-19',  pg_read_binary_file(:'fixtures' || '/pocus_convex_Cov_recommendations_likebutterfly_mov5.mp4')),
    ('es-1', 'endoscopy',  'capsule, normal mucosa',     pg_read_binary_file(:'fixtures' || '/wce_img1310.jpg')),
    ('ct-1', 'ct',         'abdominal CT volume',        pg_read_binary_file(:'fixtures' || '/totalseg_example_ct.nii.gz')),
    ('mr-1', 'mri',        'abdominal MR volume',        pg_read_binary_file(:'fixtures' || '/totalseg_example_mr_sm.nii.gz'));

\echo '== embed them in batches (one m3ret_embed_batch call per modality)'
UPDATE studies s SET emb = b.embedding
FROM (SELECT modality, array_agg(study_id ORDER BY study_id) ids, array_agg(data ORDER BY study_id) d
      FROM studies GROUP BY modality) g,
     LATERAL m3ret_embed_batch(g.d, g.modality) b
WHERE s.study_id = g.ids[b.ord];
SELECT study_id, modality, embedding_dims(emb) AS dims FROM studies ORDER BY study_id;

\echo '== nearest neighbours of the COVID-19 chest X-ray'
SELECT s.study_id, s.modality, s.finding, round((s.emb <=> q.emb)::numeric, 4) AS distance
FROM studies s, (SELECT m3ret_embed(data, 'xray') AS emb FROM studies WHERE study_id = 'xr-2') q
ORDER BY s.emb <=> q.emb LIMIT 3;

\echo '== nearest neighbours of the CT volume (a NIfTI file)'
SELECT s.study_id, s.modality, s.finding, round((s.emb <=> q.emb)::numeric, 4) AS distance
FROM studies s, (SELECT emb FROM studies WHERE study_id = 'ct-1') q
ORDER BY s.emb <=> q.emb LIMIT 3;

\echo '== a DICOM series given as bytea[] (3 CT slices), modality from the DICOM tag'
SELECT embedding_dims(m3ret_embed(ARRAY[
    pg_read_binary_file(:'fixtures' || '/ct_series/CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016573.dcm'),
    pg_read_binary_file(:'fixtures' || '/ct_series/CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016574.dcm'),
    pg_read_binary_file(:'fixtures' || '/ct_series/CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016575.dcm')
], 'auto')) AS series_embedding_dims;

\echo '== warehouse-style: retrieval joined with a clinical table and filtered'
CREATE TABLE clinical (study_id text PRIMARY KEY, patient_age int, department text);
INSERT INTO clinical VALUES ('xr-1', 4, 'pediatrics'), ('xr-2', 61, 'emergency'), ('us-1', 58, 'emergency'),
                            ('es-1', 45, 'gastroenterology'), ('ct-1', 66, 'radiology'), ('mr-1', 70, 'radiology');
SELECT s.study_id, s.modality, c.patient_age, c.department, round((s.emb <=> q.emb)::numeric, 4) AS distance
FROM studies s JOIN clinical c USING (study_id),
     (SELECT emb FROM studies WHERE study_id = 'us-1') q
WHERE c.patient_age > 50 AND s.study_id <> 'us-1'
ORDER BY s.emb <=> q.emb LIMIT 3;

\echo '== the runtime of this backend'
SELECT jsonb_pretty(m3ret_runtime_info() - 'models_loaded') AS runtime;
