//! Pictures without a plotting library: the loss curve, the learning curve and the
//! retrieval montage, drawn pixel by pixel with `image`.

use image::{Rgb, RgbImage};

/// Loss against step: a polyline on a white canvas with the axes drawn; the
/// numbers themselves are in metrics.jsonl.
pub fn loss_curve(losses: &[f64], path: &std::path::Path) -> Result<(), String> {
    let (w, h, margin) = (800u32, 400u32, 30u32);
    let mut img = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    axes(&mut img, margin);
    let finite: Vec<f64> = losses.iter().copied().filter(|v| v.is_finite()).collect();
    if finite.len() >= 2 {
        let (lo, hi) = finite
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(*v), b.max(*v)));
        let span = (hi - lo).max(1e-12);
        let to_xy = |i: usize, v: f64| {
            let x = margin as f64 + (w - 2 * margin) as f64 * i as f64 / (finite.len() - 1) as f64;
            let y = (h - margin) as f64 - (h - 2 * margin) as f64 * (v - lo) / span;
            (x, y)
        };
        for i in 1..finite.len() {
            let (a, b) = (to_xy(i - 1, finite[i - 1]), to_xy(i, finite[i]));
            segment(&mut img, a, b, Rgb([200, 30, 30]), None);
        }
    }
    img.save(path)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// One series of a learning curve: (x, R@1) points, drawn solid, or dashed for a
/// baseline.
pub struct Series {
    pub points: Vec<(f64, f64)>,
    pub colour: [u8; 3],
    pub dashed: bool,
}

/// R@1 (0 to 1, a light grid line every 0.1) against epochs (a grid line every 10),
/// one line per series, a dot at each evaluation of a solid series. No text: the
/// caption says which colour is which.
pub fn learning_curve(series: &[Series], max_x: f64, path: &std::path::Path) -> Result<(), String> {
    let (w, h, margin) = (900u32, 500u32, 30u32);
    let mut img = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    let max_x = max_x.max(1.0);
    let to_xy = |x: f64, y: f64| {
        (
            margin as f64 + (w - 2 * margin) as f64 * x / max_x,
            (h - margin) as f64 - (h - 2 * margin) as f64 * y.clamp(0.0, 1.0),
        )
    };
    let grey = Rgb([225, 225, 225]);
    for tenth in 1..=10 {
        let y = tenth as f64 / 10.0;
        segment(&mut img, to_xy(0.0, y), to_xy(max_x, y), grey, None);
    }
    for ten in (10..=max_x as u32).step_by(10) {
        segment(
            &mut img,
            to_xy(ten as f64, 0.0),
            to_xy(ten as f64, 1.0),
            grey,
            None,
        );
    }
    axes(&mut img, margin);
    for s in series {
        let colour = Rgb(s.colour);
        let dash = s.dashed.then_some(8);
        for pair in s.points.windows(2) {
            let (a, b) = (to_xy(pair[0].0, pair[0].1), to_xy(pair[1].0, pair[1].1));
            segment(&mut img, a, b, colour, dash);
        }
        if !s.dashed {
            for &(x, y) in &s.points {
                dot(&mut img, to_xy(x, y), colour);
            }
        }
    }
    img.save(path)
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn axes(img: &mut RgbImage, margin: u32) {
    let (w, h) = img.dimensions();
    for x in margin..w - margin {
        img.put_pixel(x, h - margin, Rgb([0, 0, 0]));
    }
    for y in margin..h - margin {
        img.put_pixel(margin, y, Rgb([0, 0, 0]));
    }
}

/// A straight line from `a` to `b`, 2 px thick; `dash`: drawn `dash` px, skipped `dash` px.
fn segment(img: &mut RgbImage, a: (f64, f64), b: (f64, f64), colour: Rgb<u8>, dash: Option<usize>) {
    let steps = ((b.0 - a.0).abs().max((b.1 - a.1).abs()).ceil() as usize).max(1);
    for s in 0..=steps {
        if dash.is_some_and(|d| (s / d) % 2 == 1) {
            continue;
        }
        let t = s as f64 / steps as f64;
        let (x, y) = (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t);
        put(img, x, y, colour);
        put(img, x, y + 1.0, colour);
    }
}

fn dot(img: &mut RgbImage, (x, y): (f64, f64), colour: Rgb<u8>) {
    for dy in -3..=3 {
        for dx in -3..=3 {
            if dx * dx + dy * dy <= 9 {
                put(img, x + dx as f64, y + dy as f64, colour);
            }
        }
    }
}

fn put(img: &mut RgbImage, x: f64, y: f64, colour: Rgb<u8>) {
    if x >= 0.0 && y >= 0.0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, colour);
    }
}

/// A grey or RGB thumbnail `[3, side, side]` in [0, 1] as pixels.
#[derive(Clone)]
pub struct Thumb {
    pub side: u32,
    pub rgb: Vec<u8>,
}

/// The middle slice of a canonical tensor `[3, S, H, W]`, downsampled to `side`.
pub fn thumbnail(t: &tch::Tensor, side: i64) -> Thumb {
    let s = t.size()[1];
    let slice = t.select(1, s / 2).unsqueeze(0);
    let small = slice
        .upsample_bilinear2d([side, side], false, None, None)
        .squeeze_dim(0);
    let bytes: Vec<f32> =
        Vec::try_from(small.permute([1, 2, 0]).contiguous().flatten(0, -1)).unwrap_or_default();
    Thumb {
        side: side as u32,
        rgb: bytes
            .iter()
            .map(|v| (v.clamp(0.0, 1.0) * 255.0) as u8)
            .collect(),
    }
}

/// Rows of thumbnails: query, then its neighbours framed green (hit) or red (miss).
pub fn montage(rows: &[(Thumb, Vec<(Thumb, bool)>)], path: &std::path::Path) -> Result<(), String> {
    let side = rows.first().map(|r| r.0.side).unwrap_or(64);
    let cols = 1 + rows.iter().map(|r| r.1.len()).max().unwrap_or(0) as u32;
    let cell = side + 8;
    let mut img = RgbImage::from_pixel(
        cols * cell + 8,
        rows.len().max(1) as u32 * cell,
        Rgb([255, 255, 255]),
    );
    for (r, (query, neighbours)) in rows.iter().enumerate() {
        draw(&mut img, query, 4, r as u32 * cell + 4, Rgb([60, 60, 200]));
        for (c, (thumb, hit)) in neighbours.iter().enumerate() {
            let colour = if *hit {
                Rgb([30, 170, 30])
            } else {
                Rgb([200, 30, 30])
            };
            draw(
                &mut img,
                thumb,
                (c as u32 + 1) * cell + 12,
                r as u32 * cell + 4,
                colour,
            );
        }
    }
    img.save(path)
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn draw(img: &mut RgbImage, t: &Thumb, x0: u32, y0: u32, frame: Rgb<u8>) {
    for y in 0..t.side + 4 {
        for x in 0..t.side + 4 {
            let (px, py) = (x0 + x, y0 + y);
            if px >= img.width() || py >= img.height() {
                continue;
            }
            let inside = x >= 2 && y >= 2 && x < t.side + 2 && y < t.side + 2;
            let colour = if inside {
                let i = (((y - 2) * t.side + (x - 2)) * 3) as usize;
                Rgb([t.rgb[i], t.rgb[i + 1], t.rgb[i + 2]])
            } else {
                frame
            };
            img.put_pixel(px, py, colour);
        }
    }
}
