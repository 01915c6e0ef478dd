//! Mirror of `shaders/gemm.wgsl`: `C[b] = alpha op(A[b]) op(B[b]) (+ bias[b]) (+ C[b])` in f64.

/// A matrix inside a flat slice: element `(r, c)` of batch `b` at
/// `offset + b * batch_stride + r * ld + c`.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    /// Element offset of batch 0's `(0, 0)`.
    pub offset: usize,
    /// Elements between stored rows.
    pub ld: usize,
    /// Elements between batches.
    pub batch_stride: usize,
}

/// The multiply, mirroring [`crate::kernels::gemm::Gemm`]; `c` is updated in place.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    m: usize,
    n: usize,
    k: usize,
    batch: usize,
    (trans_a, trans_b): (bool, bool),
    alpha: f64,
    accumulate: bool,
    (a, la): (&[f64], Layout),
    (b, lb): (&[f64], Layout),
    (c, lc): (&mut [f64], Layout),
    bias: Option<(&[f64], usize, usize)>,
) {
    for bt in 0..batch {
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0;
                for p in 0..k {
                    let av = if trans_a {
                        a[la.offset + bt * la.batch_stride + p * la.ld + i]
                    } else {
                        a[la.offset + bt * la.batch_stride + i * la.ld + p]
                    };
                    let bv = if trans_b {
                        b[lb.offset + bt * lb.batch_stride + j * lb.ld + p]
                    } else {
                        b[lb.offset + bt * lb.batch_stride + p * lb.ld + j]
                    };
                    s += av * bv;
                }
                let mut v = alpha * s;
                if let Some((bias, off, bs)) = bias {
                    v += bias[off + bt * bs + j];
                }
                let at = lc.offset + bt * lc.batch_stride + i * lc.ld + j;
                if accumulate {
                    v += c[at];
                }
                c[at] = v;
            }
        }
    }
}
