//! Bad requests come back as `pompc::Error` values that say what went wrong, never as a panic.

mod common;

use common::gpus;
use pompc::gpu::shader::Header;
use pompc::gpu::{Binding, KernelSpec};
use pompc::kernels::linear::{Activation, Linear, LinearConfig, LinearInputs, LinearPlan, Tile};
use pompc::{Error, Gpu, GpuBuffer, GpuOptions, Recorder};

#[test]
fn no_matching_adapter_says_how_to_get_one() {
    let err =
        Gpu::new(GpuOptions::default().with_adapter_name("no such adapter 31337")).unwrap_err();
    assert!(matches!(err, Error::NoAdapter { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("mesa-vulkan-drivers") && msg.contains("no such adapter 31337"),
        "{msg}"
    );
}

#[test]
fn wgpu_validation_errors_become_error_values() {
    let gpu = &gpus()[0];
    // MAP_READ together with STORAGE is invalid without a native-only feature.
    let err = gpu
        .scoped("making an invalid buffer", || {
            Ok(gpu.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some("invalid"),
                size: 16,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            }))
        })
        .unwrap_err();
    assert!(matches!(err, Error::Validation { .. }), "{err:?}");
    assert!(err.to_string().contains("making an invalid buffer"));
    // The device still works afterwards.
    let b = GpuBuffer::from_slice(gpu, "after", &[1u32, 2, 3]).unwrap();
    assert_eq!(b.download(gpu).unwrap(), vec![1, 2, 3]);
}

#[test]
fn oversized_buffers_name_the_limit() {
    let gpu = &gpus()[0];
    let max = gpu
        .limits()
        .max_storage_buffer_binding_size
        .min(gpu.limits().max_buffer_size);
    let err = GpuBuffer::<f32>::new(gpu, "huge", (max / 4 + 1) as usize).unwrap_err();
    assert!(matches!(err, Error::Limit(_)), "{err:?}");
    assert!(err.to_string().contains(&(max / 4).to_string()), "{err}");
}

#[test]
fn bad_linear_shapes_and_inputs() {
    let gpu = &gpus()[0];
    let e = Linear::new(gpu, LinearConfig::new(8, 12).with_act(Activation::SimNorm)).err();
    assert!(matches!(e, Some(Error::Shape(_))), "{e:?}");
    assert!(Linear::new(gpu, LinearConfig::new(8, 0)).is_err());
    assert!(Linear::new(gpu, LinearConfig::new(8, 8).with_concat(9)).is_err());

    let x = GpuBuffer::<f32>::new(gpu, "x", 4 * 8).unwrap();
    let w = GpuBuffer::<f32>::new(gpu, "w", 8 * 8).unwrap();
    let b = GpuBuffer::<f32>::new(gpu, "b", 8).unwrap();
    let y = GpuBuffer::<f32>::new(gpu, "y", 4 * 8).unwrap();
    let io = LinearInputs {
        z: &x,
        a: None,
        w: &w,
        b: &b,
        ln: None,
        y: &y,
        heads: None,
        z_offset: 0,
        a_offset: 0,
        z_repeat: 0,
        input_groups: 1,
        input_strides: None,
    };
    let layer = Linear::new(gpu, LinearConfig::new(8, 8)).unwrap();
    let mut rec = Recorder::new(gpu);
    // Five rows do not fit buffers of four.
    let err = layer.record(&mut rec, 5, io).unwrap_err();
    assert!(
        err.to_string().contains("Z holds 32 elements, needs 40"),
        "{err}"
    );
    // A concatenating layer without its second input.
    let cat = Linear::new(gpu, LinearConfig::new(8, 8).with_concat(6)).unwrap();
    assert!(cat.record(&mut rec, 1, io).is_err());
    // LayerNorm without its parameters.
    let ln = Linear::new(gpu, LinearConfig::new(8, 8).with_ln()).unwrap();
    assert!(ln.record(&mut rec, 1, io).is_err());
    // A tile the kernel cannot run.
    let odd = Linear::new(gpu, LinearConfig::new(8, 8))
        .unwrap()
        .with_plan(Some(LinearPlan {
            tile: Tile {
                tm: 3,
                ..Tile::SMALL
            },
            split: 1,
        }));
    assert!(odd.record(&mut rec, 1, io).is_err());
    assert_eq!(rec.dispatches(), 0);
}

#[test]
fn broken_wgsl_names_its_line() {
    let gpu = &gpus()[0];
    let src = "@group(0) @binding(0) var<storage, read_write> o: array<f32>;\n\
               @compute @workgroup_size(1)\n\
               fn main() {\n    o[0] = undefined_name;\n}\n";
    let pre =
        pompc::gpu::shader::preprocess_with("user", src, &Header::default(), &|_| None).unwrap();
    let err = gpu
        .pipeline_from_source("user", &pre, "main", &[(0, Binding::ReadWrite)], &[], None)
        .unwrap_err();
    assert!(matches!(err, Error::Shader { .. }), "{err:?}");
    assert!(err.to_string().contains("user:4:"), "{err}");
}

#[test]
fn wrong_binding_count_is_an_error() {
    let gpu = &gpus()[0];
    const SPEC: KernelSpec = KernelSpec {
        shader: "rng_fill",
        entry: "fill",
        bindings: &[(0, Binding::ReadWrite), (1, Binding::Uniform)],
    };
    let pipe = gpu
        .pipeline(&SPEC, &Header::default(), &[("KIND", 0.0)])
        .unwrap();
    let mut rec = Recorder::new(gpu);
    let err = rec
        .dispatch::<[u32; 4]>(&pipe, &[], Some(&[0; 4]), [1, 1, 1])
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
}
