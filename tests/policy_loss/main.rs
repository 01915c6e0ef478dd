//! The PO-MPC policy-update row kernels (`sample`, `policy_loss` and its divergence pass,
//! `prior_fit` and its divergence pass) against their f64 mirror on fresh random inputs with
//! poisoned outputs, with shader checks on and off: both parameterisations, every KL form and
//! prior input, both entropy forms, the Q and LL terms on and off, the TD-M(PC)² gate on and
//! off, scales given or not, gradients written, added or skipped, losses written or added,
//! divergence rows written or not, rows at offsets and strides (elements between and around
//! them must not change), one-pass and two-pass reductions, the 2-D grid, zero rows and bad
//! requests. The mirror's gradients are checked against central finite differences of the
//! mirror's loss (f64; the Q term through a synthetic differentiable q(a) whose gradient is the
//! `dq` input), the GPU gradients against finite differences of the GPU loss (f32), the closed
//! form KL against known values and a quadrature of `E_p[log p - log q]`, the single-sample
//! estimate's expectation against the closed form, and each preset's per-row loss against a
//! hand computation.
//!
//! Inputs stay away from the loss's kinks and its pole, where a finite difference or an f32
//! rounding flips a branch: the clamp `|x| = 1` (BMPC head) and the single-sample estimate's
//! `|x| = u_max` (resampled within 1e-3), and `L = -1e-8` in the scaled entropy (rows with
//! `|L| < 0.05` resampled).
//!
//! Tolerances (worst measured error / tolerance over 10 runs with fresh seeds, both shader
//! modes, in brackets):
//! * Loss slots: `|gpu - ref| <= 4e-6 * sum_r |w_r| M_r` (+ `1e-7 |initial|` when adding, which
//!   bounds f32's rounding of the sum, 2^-24 of it), with `M_r` the sum of the magnitudes of
//!   what the row's term adds up (`harness::magnitudes`: every difference counted as the sum of
//!   its parts' magnitudes, plus the f32 error that `log_std` (a few ulps of the range's end) and
//!   `x = mu + sig eps` carry into the terms): each term sums `~2A` f32 values per row over `R`
//!   rows, a few ulps of `M` [0.28].
//! * Divergence rows: the same, per row [0.28].
//! * Gradient elements: `|gpu - ref| <= 3e-5 * G` (+ `1e-7 |initial|` when adding) with `G` the
//!   mirror's `grad_mag`: the sum of the magnitudes of the element's summands, those through
//!   `1 - tanh(x)^2 ~ 4 e^(-2|x|)` (the squash correction, `da/dx`) scaled by
//!   `1 + 2 (|mu| + sig |eps| (1 + |log_std| + range))` since they carry twice the absolute
//!   error of x [0.31 written; added 0.6, the addition's own rounding, of the earlier 1e-5
//!   bound; one seed in CI reached 1.05 of it, a single-sample KL gradient of -479 off by
//!   1.8e-5 relative (its (x - mu_p) / sig_p^2 terms cancel), hence 3e-5].
//! * Actions: `1e-5 * max(1, sig |eps| (1 - a^2) (1 + |log_std|))`, as tests/policy.rs [0.11].
//! * Results under f32's normal range get `1e-37` absolute slack (rounding is absolute there and
//!   drivers may flush); the random row weights keep `rho^t` normal.
//! * Mirror against finite differences (f64, step `1e-5 (1 + |h|)`): `1e-6 * max(1, max |grad|)`
//!   [7e-9 measured].
//! * GPU against finite differences of the GPU loss (f32, step 1e-3, log-std in [-2, 0]):
//!   `5e-3 * max(max |grad|, 0.1)`: the f32 total of 5 rows carries ~1e-7 of its magnitude
//!   (~10), over the step ~1e-3 absolute; truncation `step^2 / 6 |f'''|` is below 1e-5
//!   [6e-4 relative measured].
//! * Hand-computed presets: mirror `1e-12` relative, GPU `2e-6` relative to the terms'
//!   magnitude [1.7e-7 measured].
//!
//! Lavapipe, 2 cores: the whole binary runs in about 9 s (release; 13 to 18 s while other
//! builds share the cores).
//!
//! By pass: `policy` (the loss and its divergence pass), `sample`, `prior_fit`, `gradients`
//! (finite differences), `closed_forms` (known values, quadratures, hand-computed presets),
//! `requests` (the 2-D grid, zero rows, bad requests, every pipeline through naga); the shared
//! inputs, mirror calls, magnitudes and tolerances are in `harness`.

#[path = "../common/mod.rs"]
mod common;
mod harness;

mod closed_forms;
mod gradients;
mod policy;
mod population;
mod prior_fit;
mod requests;
mod sample;
