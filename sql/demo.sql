-- m3ret demo. Run by scripts/demo.sh against a local cluster.
-- Today it shows the embedding type and nearest-neighbour search with its operators;
-- it grows with the model, the image functions and the index.

SET client_min_messages = warning;
DROP EXTENSION IF EXISTS m3ret CASCADE;
CREATE EXTENSION m3ret;

\echo '== embedding type: text form, dimensions, normalisation'
SELECT '[1,2.5,-3]'::embedding AS literal,
       embedding_dims('[1,2.5,-3]') AS dims,
       l2_normalize('[3,4]') AS unit;

\echo '== a tiny study table with 3-dimensional embeddings'
CREATE TABLE studies (
    study_id  text PRIMARY KEY,
    modality  text NOT NULL,
    finding   text NOT NULL,
    emb       embedding(3) NOT NULL
);
INSERT INTO studies VALUES
    ('cxr-001', 'xray', 'pneumonia', '[0.9,0.1,0.0]'),
    ('cxr-002', 'xray', 'normal',    '[0.8,0.3,0.1]'),
    ('ct-001',  'ct',   'hemorrhage','[0.1,0.9,0.2]'),
    ('mri-001', 'mri',  'glioma',    '[0.0,0.2,0.95]'),
    ('us-001',  'ultrasound', 'benign', '[0.5,0.5,0.5]');

\echo '== the 3 studies nearest to [1,0.2,0] by cosine distance (<=>)'
SELECT study_id, modality, finding, round((emb <=> '[1,0.2,0]')::numeric, 4) AS cosine_distance
FROM studies ORDER BY emb <=> '[1,0.2,0]' LIMIT 3;

\echo '== the same by Euclidean distance (<->) and negative inner product (<#>)'
SELECT study_id,
       round((emb <-> '[1,0.2,0]')::numeric, 4) AS l2,
       round((emb <#> '[1,0.2,0]')::numeric, 4) AS neg_inner_product
FROM studies ORDER BY emb <-> '[1,0.2,0]' LIMIT 3;
