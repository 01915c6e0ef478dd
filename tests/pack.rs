//! The pack kernel (`shaders/pack.wgsl`) against its mirror (`src/reference/pack.rs`) on random
//! blocks, f32 and f16 destinations, both shader check modes: every element outside the block
//! keeps its poison.

mod common;

use common::{POISON, gpus, rng, uniform};
use pompc::kernels::pack::{self, PackLayout};
use pompc::reference::pack as mirror;
use pompc::{GpuBuffer, Recorder};
use rand::Rng;

fn layout(r: &mut impl Rng) -> PackLayout {
    let cols = r.random_range(1..40);
    let block_rows = r.random_range(1..9);
    let blocks = r.random_range(1..4);
    let dst_stride = cols + r.random_range(0..7);
    PackLayout {
        rows: block_rows * blocks,
        cols,
        src_offset: r.random_range(0..13),
        src_stride: cols + r.random_range(0..9),
        dst_offset: r.random_range(0..13),
        dst_stride,
        block_rows,
        dst_block: block_rows * dst_stride + r.random_range(0..20),
    }
}

#[test]
fn blocks_land_where_the_mirror_puts_them() {
    let mut r = rng("pack");
    for gpu in gpus() {
        for _ in 0..6 {
            let at = layout(&mut r);
            let last = (at.rows - 1) as usize;
            let src_len = at.src_index(last, at.cols as usize - 1) + 1 + r.random_range(0..5);
            let dst_len = at.dst_index(last, at.cols as usize - 1) + 1 + r.random_range(0..5);
            let src_host = uniform(&mut r, src_len, 3.0);
            let src = GpuBuffer::from_slice(gpu, "src", &src_host).unwrap();
            let poison = vec![f32::from_bits(POISON); dst_len];
            // f32 destination: exact.
            let dst = GpuBuffer::<f32>::new(gpu, "dst", dst_len).unwrap();
            dst.fill_u32(gpu, POISON).unwrap();
            let mut rec = Recorder::new(gpu);
            pack::record(&mut rec, &src, &dst, at).unwrap();
            rec.submit().unwrap();
            let got = dst.download(gpu).unwrap();
            let want = mirror::pack(&src_host, &poison, &at, false);
            let same =
                |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same(&got, &want), "f32 pack {at:?} differs from the mirror");
            if !gpu.features().shader_f16 {
                continue;
            }
            // f16 destination: the conversion may round either way (one ulp).
            let dst = GpuBuffer::<half::f16>::new(gpu, "dst16", dst_len).unwrap();
            dst.upload(gpu, &vec![half::f16::NAN; dst_len]).unwrap();
            let mut rec = Recorder::new(gpu);
            pack::record(&mut rec, &src, &dst, at).unwrap();
            rec.submit().unwrap();
            let got = dst.download(gpu).unwrap();
            let want = mirror::pack(&src_host, &vec![f32::NAN; dst_len], &at, true);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                if w.is_nan() {
                    assert!(
                        g.is_nan(),
                        "f16 pack {at:?}: element {i} outside the block written"
                    );
                } else {
                    let ulp = half::f16::from_f32(*w).to_bits().abs_diff(g.to_bits());
                    assert!(ulp <= 1, "f16 pack {at:?}: element {i} {g} against {w}");
                }
            }
        }
    }
}

#[test]
fn blocks_outside_the_buffers_are_errors() {
    let gpu = &gpus()[0];
    let src = GpuBuffer::<f32>::new(gpu, "src", 100).unwrap();
    let dst = GpuBuffer::<f32>::new(gpu, "dst", 100).unwrap();
    let ok = PackLayout {
        rows: 4,
        cols: 5,
        src_stride: 5,
        dst_stride: 5,
        block_rows: 2,
        dst_block: 10,
        ..Default::default()
    };
    for (what, at) in [
        (
            "source too short",
            PackLayout {
                src_offset: 90,
                ..ok
            },
        ),
        (
            "destination too short",
            PackLayout {
                dst_offset: 90,
                ..ok
            },
        ),
        (
            "zero block rows",
            PackLayout {
                block_rows: 0,
                ..ok
            },
        ),
        (
            "rows wider than the stride",
            PackLayout {
                dst_stride: 4,
                ..ok
            },
        ),
        ("blocks overlap", PackLayout { dst_block: 9, ..ok }),
    ] {
        let mut rec = Recorder::new(gpu);
        assert!(
            pack::record(&mut rec, &src, &dst, at).is_err(),
            "{what}: accepted"
        );
    }
    let mut rec = Recorder::new(gpu);
    pack::record(&mut rec, &src, &dst, ok).unwrap();
}
