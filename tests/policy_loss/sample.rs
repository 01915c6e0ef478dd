//! The policy sample against the mirror.

use crate::common::{gpus, rng};
use crate::harness::*;
use pompc::kernels::policy_loss::{self as pl, Rows};
use pompc::reference::policy_loss as mirror;
use pompc::{GpuBuffer, Recorder};

#[test]
fn sample_against_the_mirror() {
    let mut r = rng("sample");
    for gpu in gpus() {
        for (k, &a) in [1usize, 3, 6, 38, 5].iter().enumerate() {
            for head in heads(a) {
                let rows = [1, 64, 200, 33, 129][k];
                let h = unif(&mut r, rows * 2 * a, -3.0, 3.0);
                let eps = normals(&mut r, rows * a);
                let (h_at, h_len) = random_layout(&mut r, rows, 2 * a);
                let (e_at, e_len) = random_layout(&mut r, rows, a);
                let (o_at, o_len) = random_layout(&mut r, rows, a);
                let hb =
                    GpuBuffer::from_slice(gpu, "h", &place(&h, 2 * a, h_at, h_len, 9.0)).unwrap();
                let eb =
                    GpuBuffer::from_slice(gpu, "eps", &place(&eps, a, e_at, e_len, 9.0)).unwrap();
                let ob = GpuBuffer::from_slice(gpu, "action", &vec![poison(); o_len]).unwrap();
                let mut rec = Recorder::new(gpu);
                pl::record_sample(
                    &mut rec,
                    &head,
                    rows,
                    Rows::at(&hb, h_at),
                    Rows::at(&eb, e_at),
                    Rows::at(&ob, o_at),
                )
                .unwrap();
                let ho = rec.read(&ob);
                let got = rec.finish().unwrap().get(&ho).unwrap();
                let (h64, e64) = (f64s(&h), f64s(&eps));
                let want = mirror::sample(&head, rows, &h64, &e64);
                for (i, &g) in got.iter().enumerate() {
                    match in_rows(i, o_at, rows, a) {
                        Some((row, j)) => {
                            let el = mirror::elem(
                                &head,
                                &h64[row * 2 * a..(row + 1) * 2 * a],
                                &e64[row * a..(row + 1) * a],
                                j,
                            );
                            let sens = el.sig * el.e.abs() * el.fp * (1.0 + el.hd.ls.abs());
                            let tol = ACTION_TOL * sens.max(1.0);
                            let err = (g as f64 - want[row * a + j]).abs();
                            note(3, err / tol);
                            assert!(
                                err <= tol,
                                "{head:?} row {row} dim {j}: gpu {g} want {}",
                                want[row * a + j]
                            );
                        }
                        None => assert!(g.is_nan(), "{head:?}: element {i} changed"),
                    }
                }
            }
        }
    }
    report("sample_against_the_mirror");
}
