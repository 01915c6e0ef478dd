//! Mirror of `shaders/gemm.wgsl`: `C[b] = alpha op(A[b]) op(B[b]) (+ bias[b]) (+ C[b])` in f64.

/// A matrix inside a flat slice: element `(r, c)` of member `m` of agent `g` at
/// `offset + g * agent_stride + m * batch_stride + r * ld + c` (one agent: batch `b` at
/// `offset + b * batch_stride`).
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    /// Element offset of batch 0's `(0, 0)`.
    pub offset: usize,
    /// Elements between stored rows.
    pub ld: usize,
    /// Elements between batches.
    pub batch_stride: usize,
    /// Elements between agents.
    pub agent_stride: usize,
}

impl Layout {
    /// Offset of batch `bt`'s `(0, 0)` when the batch is split into agents of `per` members.
    pub(crate) fn base(&self, bt: usize, per: usize) -> usize {
        self.offset + (bt / per) * self.agent_stride + (bt % per) * self.batch_stride
    }
}

/// The multiply, mirroring [`crate::kernels::gemm::Gemm`] (`batch` multiplies split into
/// `agents`); `c` is updated in place. `bias` is `(values, layout)`, its rows of `n` at
/// the layout's offsets.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    m: usize,
    n: usize,
    k: usize,
    (batch, agents): (usize, usize),
    (trans_a, trans_b): (bool, bool),
    alpha: f64,
    accumulate: bool,
    (a, la): (&[f64], Layout),
    (b, lb): (&[f64], Layout),
    (c, lc): (&mut [f64], Layout),
    bias: Option<(&[f64], Layout)>,
) {
    let per = batch / agents;
    for bt in 0..batch {
        let (a0, b0, c0) = (la.base(bt, per), lb.base(bt, per), lc.base(bt, per));
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0;
                for p in 0..k {
                    let av = if trans_a {
                        a[a0 + p * la.ld + i]
                    } else {
                        a[a0 + i * la.ld + p]
                    };
                    let bv = if trans_b {
                        b[b0 + j * lb.ld + p]
                    } else {
                        b[b0 + p * lb.ld + j]
                    };
                    s += av * bv;
                }
                let mut v = alpha * s;
                if let Some((bias, lbias)) = bias {
                    v += bias[lbias.base(bt, per) + j];
                }
                let at = c0 + i * lc.ld + j;
                if accumulate {
                    v += c[at];
                }
                c[at] = v;
            }
        }
    }
}
