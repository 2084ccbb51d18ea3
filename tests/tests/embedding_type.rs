//! The `embedding` type through a real cluster: text and binary forms, operators
//! against values computed here, casts, typmods and every bad input.

use m3ret_e2e::wire::{self, literal, RawEmbeddingBytes, Vector};
use m3ret_e2e::{expect_error, Cluster};
use rand::{Rng, SeedableRng};

fn random_vector(rng: &mut impl Rng, dims: usize) -> Vec<f32> {
    (0..dims).map(|_| rng.gen_range(-2.0f32..2.0)).collect()
}

/// Independent f64 references for the three distances.
fn reference(a: &[f32], b: &[f32]) -> (f64, f64, f64) {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let l2: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    (1.0 - dot / (na * nb), l2, -dot)
}

#[test]
fn text_form_round_trips() {
    let db = Cluster::shared().database("text_form");
    let mut c = db.connect();
    let cases = [
        ("[1,2.5,-3]", "[1,2.5,-3]"),
        (" [ 1 , 2 ] ", "[1,2]"),
        ("[0.1]", "[0.1]"),
        ("[1e-7,3.4028235e38]", "[1e-7,3.4028235e38]"),
        ("[-0]", "[-0]"),
    ];
    for (input, expected) in cases {
        let out: String = c
            .query_one("SELECT $1::text::embedding::text", &[&input])
            .unwrap()
            .get(0);
        assert_eq!(out, expected, "input {input}");
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let v = random_vector(&mut rng, 768);
    let text: String = c
        .query_one("SELECT $1::text::embedding::text", &[&literal(&v)])
        .unwrap()
        .get(0);
    let back: Vec<f32> = text
        .trim_matches(['[', ']'])
        .split(',')
        .map(|t| t.parse().unwrap())
        .collect();
    assert_eq!(back, v, "768-dim text round trip must be exact");
    Cluster::shared().assert_no_backend_crashed();
}

#[test]
fn binary_form_matches_pgvector_layout() {
    let db = Cluster::shared().database("binary_form");
    let mut c = db.connect();
    // Server -> client (send): decoded by our own reading of the layout.
    let got: Vector = c
        .query_one("SELECT '[1,2.5,-3]'::embedding", &[])
        .unwrap()
        .get(0);
    assert_eq!(got, Vector(vec![1.0, 2.5, -3.0]));
    // Client -> server (recv) and back.
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let v = Vector(random_vector(&mut rng, 384));
    let back: Vector = c.query_one("SELECT $1::embedding", &[&v]).unwrap().get(0);
    assert_eq!(back, v);
    let text: String = c
        .query_one("SELECT $1::embedding::text", &[&Vector(vec![0.5, -1.0])])
        .unwrap()
        .get(0);
    assert_eq!(text, "[0.5,-1]");
    // COPY BINARY out: one row, one field, whose bytes are exactly the wire form.
    c.batch_execute("CREATE TABLE items (e embedding(3)); INSERT INTO items VALUES ('[1,2,3]')")
        .unwrap();
    let mut raw = Vec::new();
    std::io::Read::read_to_end(
        &mut c.copy_out("COPY items TO STDOUT (FORMAT binary)").unwrap(),
        &mut raw,
    )
    .unwrap();
    let field = wire::encode(&[1.0, 2.0, 3.0]);
    let header_len = 11 + 4 + 4; // signature, flags, extension length
    let tuple = &raw[header_len..];
    assert_eq!(i16::from_be_bytes([tuple[0], tuple[1]]), 1, "one field");
    assert_eq!(
        i32::from_be_bytes([tuple[2], tuple[3], tuple[4], tuple[5]]) as usize,
        field.len()
    );
    assert_eq!(&tuple[6..6 + field.len()], &field[..]);
    // COPY BINARY in with the same bytes.
    let mut writer = c.copy_in("COPY items FROM STDIN (FORMAT binary)").unwrap();
    std::io::Write::write_all(&mut writer, &raw).unwrap();
    writer.finish().unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM items WHERE e::text = '[1,2,3]'", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    // On-disk size: 4-byte length + dim + unused + 3 floats, as pgvector.
    let size: i32 = c
        .query_one("SELECT pg_column_size('[1,2,3]'::embedding)", &[])
        .unwrap()
        .get(0);
    assert_eq!(size, 20);
}

#[test]
fn operators_match_independent_computation() {
    let db = Cluster::shared().database("operators");
    let mut c = db.connect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    for dims in [1, 3, 17, 384, 768] {
        for _ in 0..5 {
            let (a, b) = (random_vector(&mut rng, dims), random_vector(&mut rng, dims));
            let row = c
                .query_one(
                    "SELECT $1::embedding <=> $2::embedding, $1::embedding <-> $2::embedding, \
                            $1::embedding <#> $2::embedding, inner_product($1::embedding, $2::embedding), \
                            cosine_distance($1::embedding, $2::embedding), l2_distance($1::embedding, $2::embedding)",
                    &[&Vector(a.clone()), &Vector(b.clone())],
                )
                .unwrap();
            let (cos, l2, neg_ip) = reference(&a, &b);
            let tol = 1e-4 * (1.0 + neg_ip.abs());
            assert!((row.get::<_, f64>(0) - cos).abs() < 1e-5, "<=> dims {dims}");
            assert!(
                (row.get::<_, f64>(1) - l2).abs() < 1e-4 * (1.0 + l2),
                "<-> dims {dims}"
            );
            assert!(
                (row.get::<_, f64>(2) - neg_ip).abs() < tol,
                "<#> dims {dims}"
            );
            assert!(
                (row.get::<_, f64>(3) + neg_ip).abs() < tol,
                "inner_product dims {dims}"
            );
            assert_eq!(row.get::<_, f64>(4), row.get::<_, f64>(0));
            assert_eq!(row.get::<_, f64>(5), row.get::<_, f64>(1));
        }
    }
    // Cosine is clamped to [0, 2] and NaN for a zero vector.
    let row = c
        .query_one("SELECT '[1,2,3]'::embedding <=> '[1,2,3]', '[1,2,3]'::embedding <=> '[-1,-2,-3]', '[1,1]'::embedding <=> '[0,0]'", &[])
        .unwrap();
    let (same, opposite, zero): (f64, f64, f64) = (row.get(0), row.get(1), row.get(2));
    assert!((0.0..1e-7).contains(&same), "{same}");
    assert!(
        (opposite - 2.0).abs() < 1e-7 && opposite <= 2.0,
        "{opposite}"
    );
    assert!(zero.is_nan());
    // Ordering by distance picks the nearest first.
    c.batch_execute(
        "CREATE TABLE pts (id int, e embedding(2));
         INSERT INTO pts VALUES (1, '[1,0]'), (2, '[0,1]'), (3, '[1,1]'), (4, '[-1,0]');",
    )
    .unwrap();
    let ids = |c: &mut postgres::Client, op: &str| -> Vec<i32> {
        c.query(
            &format!("SELECT id FROM pts ORDER BY e {op} '[1,0.1]' LIMIT 4"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
    };
    assert_eq!(ids(&mut c, "<=>"), vec![1, 3, 2, 4]);
    assert_eq!(ids(&mut c, "<->"), vec![1, 3, 2, 4]);
    assert_eq!(ids(&mut c, "<#>"), vec![3, 1, 2, 4]);
}

#[test]
fn helper_functions() {
    let db = Cluster::shared().database("helpers");
    let mut c = db.connect();
    let dims: i32 = c
        .query_one("SELECT embedding_dims('[1,2,3,4]')", &[])
        .unwrap()
        .get(0);
    assert_eq!(dims, 4);
    let n: Vector = c
        .query_one("SELECT l2_normalize('[3,4]')", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, Vector(vec![0.6, 0.8]));
    let z: String = c
        .query_one("SELECT l2_normalize('[0,0]')::text", &[])
        .unwrap()
        .get(0);
    assert_eq!(z, "[0,0]");
}

#[test]
fn casts_and_typmods() {
    let db = Cluster::shared().database("casts");
    let mut c = db.connect();
    let arr: Vec<f32> = c
        .query_one("SELECT '[1,2.5,-3]'::embedding::real[]", &[])
        .unwrap()
        .get(0);
    assert_eq!(arr, vec![1.0, 2.5, -3.0]);
    let e: String = c
        .query_one("SELECT ARRAY[1,2.5,-3]::real[]::embedding::text", &[])
        .unwrap()
        .get(0);
    assert_eq!(e, "[1,2.5,-3]");
    let e: String = c
        .query_one(
            "SELECT ARRAY[0.25,4]::double precision[]::embedding(2)::text",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(e, "[0.25,4]");
    let e: String = c
        .query_one("SELECT '[1,2]'::embedding::embedding(2)::text", &[])
        .unwrap()
        .get(0);
    assert_eq!(e, "[1,2]");
    // The column's typmod shows in the catalog and is enforced on insert.
    c.batch_execute(
        "CREATE TABLE t (e embedding(3)); INSERT INTO t VALUES ('[1,2,3]'), (ARRAY[4,5,6]::real[])",
    )
    .unwrap();
    let ty: String = c
        .query_one("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 't'::regclass AND attname = 'e'", &[])
        .unwrap()
        .get(0);
    assert_eq!(ty, "embedding(3)");
    assert_eq!(
        expect_error(&mut c, "INSERT INTO t VALUES ('[1,2]')"),
        "expected 3 dimensions, not 2"
    );
    assert_eq!(
        expect_error(&mut c, "INSERT INTO t VALUES (ARRAY[1,2]::real[])"),
        "expected 3 dimensions, not 2"
    );
    assert_eq!(
        expect_error(&mut c, "INSERT INTO t SELECT '[1,2,3,4]'::embedding"),
        "expected 3 dimensions, not 4"
    );
    assert_eq!(
        expect_error(&mut c, "SELECT '[1,2]'::embedding(3)"),
        "expected 3 dimensions, not 2"
    );
    assert_eq!(
        expect_error(&mut c, "SELECT ARRAY[1,NULL]::real[]::embedding"),
        "array must not contain nulls"
    );
    assert_eq!(
        expect_error(&mut c, "SELECT ARRAY[]::real[]::embedding"),
        "embedding must have at least 1 dimension"
    );
    assert!(
        expect_error(&mut c, "SELECT ARRAY[1e300]::float8[]::embedding").contains("not finite")
    );
    assert_eq!(
        expect_error(&mut c, "CREATE TABLE bad (e embedding(0))"),
        "dimensions for type embedding must be at least 1"
    );
    assert_eq!(
        expect_error(&mut c, "CREATE TABLE bad (e embedding(16001))"),
        "dimensions for type embedding cannot exceed 16000"
    );
    let n: i64 = c.query_one("SELECT count(*) FROM t", &[]).unwrap().get(0);
    assert_eq!(n, 2);
}

#[test]
fn bad_text_input_is_a_clear_error() {
    let db = Cluster::shared().database("bad_text");
    let mut c = db.connect();
    let cases = [
        (
            "[1,,2]",
            "malformed embedding literal \"[1,,2]\": element 2 is empty",
        ),
        (
            "[1,2",
            "malformed embedding literal \"[1,2\": it must end with \"]\"",
        ),
        (
            "abc",
            "malformed embedding literal \"abc\": it must start with \"[\"",
        ),
        ("[]", "embedding must have at least 1 dimension"),
        (
            "[1,x]",
            "malformed embedding literal \"[1,x]\": element 2 (\"x\") is not a number",
        ),
        (
            "[1,NaN]",
            "embedding element 2 is not finite (NaN): NaN and infinity are not allowed",
        ),
        (
            "[Infinity]",
            "embedding element 1 is not finite (Infinity): NaN and infinity are not allowed",
        ),
        (
            "[-inf,1]",
            "embedding element 1 is not finite (-inf): NaN and infinity are not allowed",
        ),
    ];
    for (input, message) in cases {
        assert_eq!(
            expect_error(&mut c, &format!("SELECT '{input}'::embedding")),
            message,
            "input {input}"
        );
    }
    let too_many = format!("[{}]", vec!["0"; 16001].join(","));
    assert_eq!(
        expect_error(&mut c, &format!("SELECT '{too_many}'::embedding")),
        "embedding cannot have more than 16000 dimensions (got 16001)"
    );
    let max = format!("[{}]", vec!["1"; 16000].join(","));
    let dims: i32 = c
        .query_one(&format!("SELECT embedding_dims('{max}')"), &[])
        .unwrap()
        .get(0);
    assert_eq!(dims, 16000);
    Cluster::shared().assert_no_backend_crashed();
}

#[test]
fn bad_binary_input_and_dimension_mismatch() {
    let db = Cluster::shared().database("bad_binary");
    let mut c = db.connect();
    let send = |c: &mut postgres::Client, bytes: Vec<u8>| -> String {
        match c.query_one("SELECT $1::embedding::text", &[&RawEmbeddingBytes(bytes)]) {
            Ok(row) => panic!("accepted bad binary input: {}", row.get::<_, String>(0)),
            Err(e) => m3ret_e2e::error_message(&e),
        }
    };
    let mut unused = wire::encode(&[1.0, 2.0]);
    unused[3] = 1;
    assert_eq!(
        send(&mut c, unused),
        "embedding binary input has unused field 1: it must be 0"
    );
    let mut truncated = wire::encode(&[1.0, 2.0, 3.0]);
    truncated.truncate(10);
    assert_eq!(
        send(&mut c, truncated),
        "truncated embedding binary input: needed 12 more bytes, 6 left"
    );
    assert_eq!(
        send(&mut c, vec![0, 1]),
        "truncated embedding binary input: needed 2 more bytes, 0 left"
    );
    let mut zero_dims = wire::encode(&[1.0]);
    zero_dims[1] = 0;
    assert!(send(&mut c, zero_dims).starts_with("invalid embedding dimensions 0"));
    let mut nan = wire::encode(&[1.0, 2.0]);
    nan[8..12].copy_from_slice(&f32::NAN.to_be_bytes());
    assert!(send(&mut c, nan).contains("element 2 is not finite"));
    let mut too_long = wire::encode(&[1.0]);
    too_long.extend_from_slice(&[0, 0, 0, 0]);
    assert!(send(&mut c, too_long).contains("incorrect binary data format"));

    for op in ["<=>", "<->", "<#>"] {
        assert_eq!(
            expect_error(&mut c, &format!("SELECT '[1,2]'::embedding {op} '[1,2,3]'")),
            "different embedding dimensions 2 and 3"
        );
    }
    // The connection still works after all those errors, and nothing crashed.
    let one: i32 = c.query_one("SELECT 1", &[]).unwrap().get(0);
    assert_eq!(one, 1);
    Cluster::shared().assert_no_backend_crashed();
}
