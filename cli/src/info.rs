//! `pompc info`: the adapters wgpu sees.

use crate::Result;
use pompc::{Gpu, GpuOptions};

/// Options of `pompc info`.
#[derive(clap::Args)]
pub struct InfoArgs {
    /// Open a device on each adapter with full and downlevel limits, with and without optional
    /// features, and run a GEMM
    #[arg(long)]
    probe: bool,
}

/// Print every adapter; with `--probe`, open a device on each and run a GEMM.
pub fn run(args: &InfoArgs) -> Result {
    let probe = args.probe;
    let adapters = pompc::gpu::enumerate_adapters(None);
    if adapters.is_empty() {
        return Err(pompc::Error::NoAdapter {
            detail: String::new(),
        }
        .into());
    }
    for (i, a) in adapters.iter().enumerate() {
        let inf = a.get_info();
        let f = a.features();
        let l = a.limits();
        println!("[{i}] {}", inf.name);
        println!("    backend {:?}, type {:?}", inf.backend, inf.device_type);
        println!("    driver {} ({})", inf.driver, inf.driver_info);
        println!(
            "    subgroups {} (size {}..{}), shader-f16 {}, timestamps {}, cooperative matrix {}",
            f.contains(wgpu::Features::SUBGROUP),
            inf.subgroup_min_size,
            inf.subgroup_max_size,
            f.contains(wgpu::Features::SHADER_F16),
            f.contains(wgpu::Features::TIMESTAMP_QUERY),
            f.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX),
        );
        println!(
            "    max storage binding {} MiB, max buffer {} MiB, workgroup memory {} B, \
             invocations/workgroup {}, workgroups/dimension {}",
            l.max_storage_buffer_binding_size >> 20,
            l.max_buffer_size >> 20,
            l.max_compute_workgroup_storage_size,
            l.max_compute_invocations_per_workgroup,
            l.max_compute_workgroups_per_dimension,
        );
        if probe {
            probe_adapter(a);
        }
    }
    match Gpu::new(GpuOptions::default()) {
        Ok(g) => println!("default choice: {}", g.describe()),
        Err(e) => println!("default choice failed: {e}"),
    }
    Ok(())
}

/// Open a device on `adapter` with each limits request, with and without the optional
/// features, and run a small GEMM against the CPU on each device that opens.
fn probe_adapter(adapter: &wgpu::Adapter) {
    use pompc::gpu::LimitsRequest;
    use pompc::kernels::gemm::{self, Gemm, Mat, Operands};
    for (lname, limits) in [
        ("adapter limits", LimitsRequest::Adapter),
        ("downlevel limits", LimitsRequest::Downlevel),
    ] {
        for features in [true, false] {
            let opts = GpuOptions {
                limits: limits.clone(),
                optional_features: features,
                ..GpuOptions::default()
            };
            let what = format!(
                "{lname}, {} optional features",
                if features { "with" } else { "without" }
            );
            let result = Gpu::from_adapter(adapter.clone(), &opts).and_then(|gpu| {
                let (m, n, k) = (33, 17, 29);
                let a: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
                let b: Vec<f32> = (0..k * n).map(|i| ((i * 5) % 11) as f32 - 5.0).collect();
                let ab = pompc::GpuBuffer::from_slice(&gpu, "a", &a)?;
                let bb = pompc::GpuBuffer::from_slice(&gpu, "b", &b)?;
                let cb = pompc::GpuBuffer::<f32>::new(&gpu, "c", m * n)?;
                let mut rec = pompc::Recorder::new(&gpu);
                gemm::record(
                    &mut rec,
                    &Gemm::new(m, n, k),
                    Operands::new(Mat::rows(&ab, k), Mat::rows(&bb, n), Mat::rows(&cb, n)),
                )?;
                let h = rec.read(&cb);
                let c = rec.finish()?.get(&h)?;
                // Small integers: the product is exact in f32.
                let exact = (0..m).all(|i| {
                    (0..n).all(|j| {
                        let s: f32 = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
                        c[i * n + j] == s
                    })
                });
                Ok(exact)
            });
            match result {
                Ok(true) => println!("    probe, {what}: device opens, GEMM exact"),
                Ok(false) => println!("    probe, {what}: device opens, GEMM WRONG"),
                Err(e) => println!("    probe, {what}: {e}"),
            }
        }
    }
}
