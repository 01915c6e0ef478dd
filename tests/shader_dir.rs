//! `POMPC_SHADER_DIR` reaches the MPPI shader that custom problems are spliced into, and the
//! files it imports: a version in that folder is the one compiled (one that does not compile
//! fails at its own line), and without the variable the embedded one is. The variable is
//! process-wide, so this binary holds this one test.

mod common;

use pompc::Error;
use pompc::gpu::shader;
use pompc::planner::custom::{Mppi, MppiConfig};

fn cfg() -> MppiConfig {
    MppiConfig {
        horizon: 5,
        samples: 16,
        ..MppiConfig::new(1)
    }
}

/// The error of building the problem, which must be a shader error at `file:line`.
fn shader_error_at(gpu: &pompc::Gpu, at: &str) {
    match Mppi::new(gpu, common::point_problem(), cfg()) {
        Err(Error::Shader { message, .. }) => {
            assert!(message.contains(at), "expected an error at {at}: {message}")
        }
        Err(e) => panic!("expected a shader error at {at}, got {e}"),
        Ok(_) => panic!("expected a shader error at {at}; the folder's shader was not used"),
    }
}

#[test]
fn shader_dir_reaches_the_mppi_shader() {
    let gpu = &common::gpus()[0];
    let dir = std::env::temp_dir().join(format!("pompc-shader-dir-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("common")).unwrap();
    let mppi = shader::source("mppi").unwrap();
    let rng = shader::source("common/rng").unwrap();
    let step = |m: &mut Mppi| m.step(&[0.0]).unwrap();
    let mut plain = Mppi::new(gpu, common::point_problem(), cfg()).unwrap();
    plain.set_params(&[1.0]).unwrap();
    let want = step(&mut plain);

    // SAFETY: the only test of this binary; nothing else reads the environment meanwhile.
    unsafe { std::env::set_var("POMPC_SHADER_DIR", &dir) };
    // A broken mppi.wgsl in the folder: the error is at its own last line.
    let broken = |text: &str| {
        let t = format!("{text}\nnot wgsl;\n");
        let line = t.lines().position(|l| l == "not wgsl;").unwrap() + 1;
        (t, line)
    };
    let (text, line) = broken(mppi);
    std::fs::write(dir.join("mppi.wgsl"), text).unwrap();
    shader_error_at(gpu, &format!("mppi:{line}"));
    // A working mppi.wgsl and a broken common/rng.wgsl: the import comes from the folder too.
    std::fs::write(dir.join("mppi.wgsl"), mppi).unwrap();
    let (text, line) = broken(rng);
    std::fs::write(dir.join("common/rng.wgsl"), text).unwrap();
    shader_error_at(gpu, &format!("common/rng:{line}"));
    // Both as embedded: the same plans.
    std::fs::write(dir.join("common/rng.wgsl"), rng).unwrap();
    let mut from_dir = Mppi::new(gpu, common::point_problem(), cfg()).unwrap();
    from_dir.set_params(&[1.0]).unwrap();
    assert_eq!(step(&mut from_dir), want);

    unsafe { std::env::remove_var("POMPC_SHADER_DIR") };
    std::fs::remove_dir_all(&dir).unwrap();
    // Without the variable the embedded shader is used again.
    Mppi::new(gpu, common::point_problem(), cfg()).unwrap();
}
