-- m3ret demo, part 2, run by scripts/demo.sh (and by the demo test) after
-- sql/demo_setup.sql and m3ret-load, which loaded a folder of DICOM files (the
-- committed CT series, and the corpus's DICOM samples when present) into `pacs`,
-- with their keys, and embedded them. psql variables:
--   :fixtures    folder of the committed sample files (permissive licences, see fixtures/README.md)
--   :corpus_csv  held-out studies of the development corpus picked by scripts/demo_corpus.py
--                (only a header when ../shared/data is absent)
-- Everything here is plain SQL a hospital warehouse could run.

SET client_min_messages = warning;

\echo '== the DICOM archive m3ret-load brought in: one row per series, keys as columns'
SELECT study_key, format, modality, files, patient_id, accession_number, study_date,
       meta->>'StudyDescription' AS description, emb IS NOT NULL AS embedded
FROM pacs ORDER BY modality, study_key LIMIT 12;

\echo '== load real studies of every modality'
CREATE TABLE studies (
    study_id text PRIMARY KEY,
    modality text NOT NULL,
    region   text NOT NULL,
    label    text NOT NULL,
    source   text NOT NULL,
    data     bytea,          -- NULL for the DICOM series (embedded by m3ret-load)
    emb      embedding
);
-- The committed sample files.
INSERT INTO studies (study_id, modality, region, label, source, data) VALUES
    ('sample-xray-1', 'xray',       'chest',   'chest_pneumonia-pediatric', 'fixtures', pg_read_binary_file(:'fixtures' || '/pmnist_train_0000.png')),
    ('sample-xray-2', 'xray',       'chest',   'chest_covid19',             'fixtures', pg_read_binary_file(:'fixtures' || '/covidrepo_0637.jpg')),
    ('sample-us-1',   'ultrasound', 'chest',   'lung_covid19 (clip)',       'fixtures', pg_read_binary_file(:'fixtures' || '/pocus_convex_Cov_recommendations_likebutterfly_mov5.mp4')),
    ('sample-endo-1', 'endoscopy',  'abdomen', 'capsule-gi_normal',         'fixtures', pg_read_binary_file(:'fixtures' || '/wce_img1310.jpg')),
    ('sample-ct-1',   'ct',         'abdomen', 'abdomen_volume (NIfTI)',    'fixtures', pg_read_binary_file(:'fixtures' || '/totalseg_example_ct.nii.gz')),
    ('sample-mr-1',   'mri',        'abdomen', 'abdomen_volume (NIfTI)',    'fixtures', pg_read_binary_file(:'fixtures' || '/totalseg_example_mr_sm.nii.gz'));
-- The DICOM series m3ret-load loaded and embedded (region from BodyPartExamined).
INSERT INTO studies (study_id, modality, region, label, source, emb)
SELECT study_key, modality,
       CASE lower(meta->>'BodyPartExamined') WHEN 'head' THEN 'head' WHEN 'chest' THEN 'chest'
            WHEN 'abdomen' THEN 'abdomen' ELSE 'body' END,
       coalesce(meta->>'StudyDescription', meta->>'SeriesDescription', format), 'pacs', emb
FROM pacs WHERE emb IS NOT NULL;
-- Held-out studies of the development corpus, when it is present.
CREATE TEMP TABLE corpus (study_id text, modality text, region text, label text, path text, licence text);
COPY corpus FROM :'corpus_csv' WITH (FORMAT csv, HEADER);
INSERT INTO studies (study_id, modality, region, label, source, data)
SELECT study_id, modality, region, label, 'corpus', pg_read_binary_file(path) FROM corpus;
SELECT modality, count(*) AS studies, count(DISTINCT label) AS labels FROM studies GROUP BY modality ORDER BY modality;

\echo '== embed them in batches (one m3ret_embed_batch call per modality)'
UPDATE studies s SET emb = b.embedding
FROM (SELECT modality, array_agg(study_id ORDER BY study_id) AS ids, array_agg(data ORDER BY study_id) AS d
      FROM studies WHERE data IS NOT NULL GROUP BY modality) g,
     LATERAL m3ret_embed_batch(g.d, g.modality) b
WHERE s.study_id = g.ids[b.ord];
SELECT count(*) AS embedded, min(embedding_dims(emb)) AS dims FROM studies WHERE emb IS NOT NULL;

\echo '== build the m3ret_hnsw index (cosine distance)'
CREATE INDEX studies_emb_idx ON studies USING m3ret_hnsw (emb embedding_cosine_ops);
ANALYZE studies;
-- With a few hundred rows the planner rightly prefers to sort them all; on an
-- archive it picks the index by itself. Here we ask for the index to show it.
SET enable_seqscan = off;
EXPLAIN (COSTS OFF)
SELECT study_id FROM studies ORDER BY emb <=> (SELECT emb FROM studies WHERE study_id = 'sample-xray-2') LIMIT 5;

\echo '== nearest neighbours of a chest X-ray (COVID-19)'
SELECT s.study_id, s.modality, s.label, round((s.emb <=> q.emb)::numeric, 4) AS distance
FROM studies s, (SELECT study_id, emb FROM studies WHERE study_id = 'sample-xray-2') q
WHERE s.study_id <> q.study_id
ORDER BY s.emb <=> q.emb LIMIT 5;

\echo '== nearest neighbours of a CT volume (abdomen, NIfTI)'
SELECT s.study_id, s.modality, s.label, round((s.emb <=> q.emb)::numeric, 4) AS distance
FROM studies s, (SELECT study_id, emb FROM studies WHERE study_id = 'sample-ct-1') q
WHERE s.study_id <> q.study_id
ORDER BY s.emb <=> q.emb LIMIT 5;

\echo '== nearest neighbours of a lung ultrasound clip (MP4)'
SELECT s.study_id, s.modality, s.label, round((s.emb <=> q.emb)::numeric, 4) AS distance
FROM studies s, (SELECT study_id, emb FROM studies WHERE study_id = 'sample-us-1') q
WHERE s.study_id <> q.study_id
ORDER BY s.emb <=> q.emb LIMIT 5;

\echo '== cross-modal: a CT slice retrieving MRI (a head CT when the corpus is present)'
SELECT q.study_id AS query, q.region AS query_region, s.study_id, s.label, s.region,
       s.region = q.region AS same_region, round((s.emb <=> q.emb)::numeric, 4) AS distance
FROM studies s,
     (SELECT study_id, region, emb FROM studies WHERE modality = 'ct'
      ORDER BY (region = 'head') DESC, (source = 'corpus') DESC, study_id LIMIT 1) q
WHERE s.modality = 'mri'
ORDER BY s.emb <=> q.emb LIMIT 5;

\echo '== warehouse: retrieval joined with a clinical table and filtered'
-- A synthetic clinical table (ages and departments derived from the study id):
-- the point is the query shape, not the values.
CREATE TABLE clinical AS
SELECT study_id,
       18 + abs(hashtext(study_id)) % 70 AS patient_age,
       (ARRAY['emergency', 'radiology', 'pediatrics', 'oncology'])[1 + abs(hashtext(study_id || '/dept')) % 4] AS department
FROM studies;
ALTER TABLE clinical ADD PRIMARY KEY (study_id);
SELECT s.study_id, s.modality, s.label, c.patient_age, c.department,
       round((s.emb <=> q.emb)::numeric, 4) AS distance
FROM studies s JOIN clinical c USING (study_id),
     (SELECT study_id, emb FROM studies WHERE study_id = 'sample-xray-2') q
WHERE c.patient_age >= 50 AND c.department <> 'pediatrics' AND s.study_id <> q.study_id
ORDER BY s.emb <=> q.emb LIMIT 5;

\echo '== the index is sound'
SELECT live, dead, freed, problems FROM m3ret_hnsw_check('studies_emb_idx');
RESET enable_seqscan;

\echo '== warehouse: the archive joined with a clinical table by AccessionNumber'
-- A synthetic report table keyed as a hospital's RIS keys it (the values are made up).
CREATE TABLE radiology_reports AS
SELECT accession_number,
       (ARRAY['no acute findings', 'follow-up advised', 'lesion described', 'artefacts'])[1 + abs(hashtext(accession_number)) % 4] AS impression
FROM pacs WHERE accession_number IS NOT NULL;
SELECT p.study_key, p.modality, p.accession_number, r.impression,
       round((p.emb <=> q.emb)::numeric, 4) AS distance
FROM pacs p JOIN radiology_reports r USING (accession_number),
     (SELECT study_key, emb FROM pacs WHERE modality = 'ct' AND emb IS NOT NULL ORDER BY study_key LIMIT 1) q
WHERE p.study_key <> q.study_key AND p.emb IS NOT NULL
ORDER BY p.emb <=> q.emb LIMIT 5;
