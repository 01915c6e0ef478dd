// TD-MPC2's discrete regression bins: BINS bins at linspace(VMIN, VMAX, BINS) in symlog space.
// The importer declares the override constants BINS, VMIN and VMAX and imports common/act.
// CPU mirror: src/reference/two_hot.rs.

fn bin_size() -> f32 {
    return (VMAX - VMIN) / f32(BINS - 1u);
}

// torch.linspace's formula: from the start in the lower half, from the end in the upper half,
// so the last bin is VMAX exactly.
fn bin_value(j: u32) -> f32 {
    if (j < BINS / 2u) {
        return VMIN + f32(j) * bin_size();
    }
    return VMAX - f32(BINS - 1u - j) * bin_size();
}

fn symexp(y: f32) -> f32 {
    return sign(y) * expm1(abs(y));
}

fn symlog(x: f32) -> f32 {
    return sign(x) * log(1.0 + abs(x));
}
