//! Mirror of `shaders/td.wgsl`: `y = reward + discount * min(q0, q1)`.

/// TD targets of `reward.len()` rows from two heads' values `q0`, `q1`.
pub fn td_target(reward: &[f64], q0: &[f64], q1: &[f64], discount: f64) -> Vec<f64> {
    reward
        .iter()
        .zip(q0.iter().zip(q1))
        .map(|(r, (a, b))| r + discount * a.min(*b))
        .collect()
}
