//! Fixed separable sin-cos positional embeddings over (slice, row, column).
//!
//! Fixed rather than learned so that one model serves every token grid: 2D images
//! (1 x 16 x 16 patches), video (4 x 16 x 16) and volumes (16 x 16 x 16), and the
//! smaller grids of SimDINO's local crops.

use tch::{Device, Kind, Tensor};

/// `[grid_s * grid_h * grid_w, width]`, patch order slice-major then row then column
/// (the order `Conv3d` output flattens to). `width` must be even: the slice and row
/// axes get `2 * floor(width / 6)` dimensions each, the column axis the rest.
pub fn sincos_3d(width: i64, grid: [i64; 3], device: Device) -> Tensor {
    assert!(
        width % 2 == 0 && width >= 6,
        "width {width} must be even and at least 6"
    );
    let (ds, dh) = (2 * (width / 6), 2 * (width / 6));
    let dw = width - ds - dh;
    let [gs, gh, gw] = grid;
    let n = gs * gh * gw;
    // Broadcast each axis' table over the other two axes, then flatten the grid.
    let es = axis_embedding(ds, gs, device)
        .view([gs, 1, 1, ds])
        .expand([gs, gh, gw, ds], false);
    let eh = axis_embedding(dh, gh, device)
        .view([1, gh, 1, dh])
        .expand([gs, gh, gw, dh], false);
    let ew = axis_embedding(dw, gw, device)
        .view([1, 1, gw, dw])
        .expand([gs, gh, gw, dw], false);
    Tensor::cat(&[es, eh, ew], -1).reshape([n, width])
}

/// The 1D table `[n, dim]`: sin of position x frequency in the first half, cos in the second.
fn axis_embedding(dim: i64, n: i64, device: Device) -> Tensor {
    let half = dim / 2;
    let omega = Tensor::arange(half, (Kind::Double, device)) / (half as f64);
    let omega = (omega * -(10000f64.ln())).exp();
    let pos = Tensor::arange(n, (Kind::Double, device));
    let angles = pos.unsqueeze(1) * omega.unsqueeze(0);
    Tensor::cat(&[angles.sin(), angles.cos()], 1).to_kind(Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_and_distinct_positions() {
        let pe = sincos_3d(192, [2, 3, 4], Device::Cpu);
        assert_eq!(pe.size(), vec![24, 192]);
        // Every position gets its own code.
        let d = pe.unsqueeze(0) - pe.unsqueeze(1);
        let dist = d.square().sum_dim_intlist(-1, false, Kind::Float);
        let off_diag_min = (dist + Tensor::eye(24, (Kind::Float, Device::Cpu)) * 1e9)
            .min()
            .double_value(&[]);
        assert!(off_diag_min > 1e-3, "{off_diag_min}");
        // Position (0,0,0) is sin(0)=0 / cos(0)=1 on every axis.
        let first: Vec<f32> = Vec::try_from(pe.get(0)).unwrap();
        assert_eq!(first[0], 0.0);
        assert_eq!(first[32], 1.0);
    }
}
