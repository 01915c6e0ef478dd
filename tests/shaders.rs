//! Every shader, in every combination of header and override constants that the code builds,
//! parsed, validated and compiled to SPIR-V with naga. No GPU needed.

mod common;

use pompc::gpu::shader::{self, Header, SHADERS};
use pompc::kernels::linear::{self, Activation, LinearConfig, LinearPlan, Tile};
use pompc::kernels::rng_fill::{self, Distribution};
use std::collections::{BTreeSet, HashMap};

#[test]
fn the_shader_list_matches_the_shaders_directory() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut on_disk = BTreeSet::new();
    for sub in ["", "common"] {
        for f in std::fs::read_dir(dir.join(sub)).unwrap() {
            let p = f.unwrap().path();
            if p.extension().is_some_and(|e| e == "wgsl") {
                let stem = p.file_stem().unwrap().to_string_lossy().to_string();
                on_disk.insert(if sub.is_empty() {
                    stem
                } else {
                    format!("{sub}/{stem}")
                });
            }
        }
    }
    let listed: BTreeSet<String> = SHADERS.iter().map(|s| s.name.to_string()).collect();
    assert_eq!(
        on_disk, listed,
        "shaders/ and the list in src/gpu/shader.rs differ"
    );
}

#[test]
fn linear_every_tile_split_activation_and_norm() {
    // The heuristic's tiles and those the benchmark sweep builds.
    let tiles: Vec<Tile> = Tile::ALL.iter().chain(&Tile::SWEEP).copied().collect();
    let mut n = 0;
    for tile in tiles {
        for split in [1, 2, 3, 4, 8] {
            for act in Activation::ALL {
                for ln in [false, true] {
                    for (k, k1, out) in [(512, 512, 512), (518, 512, 550), (7, 3, 8)] {
                        let mut cfg = LinearConfig::new(k, out).with_concat(k1).with_act(act);
                        cfg.layer_norm = ln;
                        let plan = LinearPlan { tile, split };
                        for epilogue in [false, true] {
                            for head_map in [false, true] {
                                let (spec, header, mut ov) =
                                    linear::pipeline_constants(&cfg, plan, epilogue, head_map);
                                common::compile_spirv(spec.shader, spec.entry, &header, &ov);
                                n += 1;
                                if epilogue && split == 1 {
                                    // What Linear::record adds: the repeated-Z layer's K parts
                                    // and its epilogue.
                                    ov.push(("PRE", 1.0));
                                    common::compile_spirv(spec.shader, spec.entry, &header, &ov);
                                } else if !epilogue && split == 1 {
                                    for kpart in [1.0, 2.0] {
                                        let mut ov = ov.clone();
                                        ov.push(("KPART", kpart));
                                        common::compile_spirv(
                                            spec.shader,
                                            spec.entry,
                                            &header,
                                            &ov,
                                        );
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(n > 1000);
}

#[test]
fn rng_fill_every_distribution() {
    for d in Distribution::ALL {
        for agents in [false, true] {
            let (spec, header, ov) = rng_fill::pipeline_constants(d, agents);
            common::compile_spirv(spec.shader, spec.entry, &header, &ov);
        }
    }
}

#[test]
fn imports_are_pasted_once_and_errors_name_the_original_line() {
    let pre = shader::preprocess("rng_fill", &Header::default()).unwrap();
    assert_eq!(pre.text.matches("fn philox4x32_10").count(), 1);
    // Line numbers map back to the files they came from.
    let idx = pre
        .text
        .lines()
        .position(|l| l.contains("fn philox4x32_10"))
        .unwrap();
    let (file, line) = &pre.origins[idx];
    assert_eq!(file, "common/rng");
    let rng_src = shader::source("common/rng").unwrap();
    assert!(
        rng_src
            .lines()
            .nth(*line as usize - 1)
            .unwrap()
            .contains("fn philox4x32_10")
    );

    let files: HashMap<&str, &str> = [
        ("main", "#import lib\nfn f() -> f32 {\n    return g();\n}\n"),
        ("lib", "fn g() -> f32 {\n    return 1.0 +;\n}\n"),
    ]
    .into_iter()
    .collect();
    let pre = shader::preprocess_with("main", files["main"], &Header::default(), &|n| {
        files.get(n).map(|s| s.to_string())
    })
    .unwrap();
    let err = shader::validate("main", &pre).unwrap_err().to_string();
    assert!(
        err.contains("lib:2:"),
        "error should point at lib line 2: {err}"
    );

    let err = shader::preprocess_with("main", "#import nowhere\n", &Header::default(), &|_| None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("main:1") && err.contains("nowhere"), "{err}");
}

#[test]
fn two_hot_every_lane_count_and_op() {
    use pompc::kernels::two_hot::{self, TwoHotConfig, TwoHotOp};
    let mut lanes = BTreeSet::new();
    for bins in [2, 3, 5, 16, 17, 33, 64, 101, 255, 300, 513, 1001, 2048] {
        for (vmin, vmax) in [(-10.0, 10.0), (-5.0, 3.0)] {
            let cfg = TwoHotConfig::new(bins, vmin, vmax).unwrap();
            for op in [TwoHotOp::Decode, TwoHotOp::Encode] {
                let (spec, header, ov) = two_hot::pipeline_constants(&cfg, op);
                common::compile_spirv(spec.shader, spec.entry, &header, &ov);
            }
            lanes.insert(two_hot::decode_lanes(bins));
        }
    }
    // Every power of two from 1 to 64 threads per row.
    assert_eq!(lanes.len(), 7, "{lanes:?}");
}

#[test]
fn policy_every_lane_count() {
    use pompc::kernels::policy::{self, PolicyConfig};
    let mut lanes = BTreeSet::new();
    for a in (1..=70).chain([128, 255, 256, 257, 1000]) {
        for (lo, hi) in [(-10.0, 2.0), (-3.0, 1.0)] {
            let cfg = PolicyConfig::new(a).with_log_std_range(lo, hi);
            let (spec, header, ov) = policy::pipeline_constants(&cfg);
            common::compile_spirv(spec.shader, spec.entry, &header, &ov);
            lanes.insert(policy::lanes(a));
        }
    }
    assert_eq!(lanes.len(), 7, "{lanes:?}");
}

#[test]
fn mppi_with_a_sample_user_problem() {
    let user = "fn dynamics(x: State, u: Control, t: u32) -> State { var y = x; y[0] += DT * u[0]; return y; }\n\
                fn running_cost(x: State, u: Control, t: u32) -> f32 { return x[0] * x[0] + param(0u); }\n\
                fn terminal_cost(x: State) -> f32 { return 0.0; }\n";
    // The rollout's staging on (H = 100) and off.
    for (s, c, stage) in [(1u32, 1u32, 1u32), (4, 2, 1), (3, 2, 0), (4, 2, 0)] {
        let header = Header(vec![
            ("STATE_DIM", s),
            ("CONTROL_DIM", c),
            ("PARAM_LEN", 26),
            ("MPPI_STAGE", stage),
            ("MPPI_STAGE_U", stage),
            ("MPPI_STAGE_P", stage),
            ("MPPI_U_LEN", if stage == 1 { 100 * c } else { 1 }),
        ]);
        let pre = shader::preprocess_with("mppi", shader::source("mppi").unwrap(), &header, &|n| {
            if n == "user" {
                Some(user.to_string())
            } else {
                shader::source(n).map(str::to_string)
            }
        })
        .unwrap();
        let (module, info) = shader::validate("mppi", &pre).unwrap();
        let constants: naga::back::PipelineConstants = [("K", 1024.0), ("H", 100.0)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        for entry in [
            "mppi_rollout",
            "mppi_normalize",
            "mppi_update",
            "mppi_shift",
        ] {
            let (m, i) = naga::back::pipeline_constants::process_overrides(
                &module,
                &info,
                Some((naga::ShaderStage::Compute, entry)),
                &constants,
            )
            .unwrap();
            let pipeline = naga::back::spv::PipelineOptions {
                shader_stage: naga::ShaderStage::Compute,
                entry_point: entry.to_string(),
            };
            naga::back::spv::write_vec(
                &m,
                &i,
                &naga::back::spv::Options::default(),
                Some(&pipeline),
            )
            .unwrap();
        }
    }
}

#[test]
fn planner_every_mode() {
    use pompc::planner::{PlanMode, PlannerConfig, PlannerMode};
    for mode in [
        PlannerMode::EliteMppi,
        PlannerMode::Mppi { lambda: 0.5 },
        PlannerMode::Cem,
    ] {
        for plan_mode in [PlanMode::Train, PlanMode::Eval] {
            for a in [1, 6, 38] {
                for episodic in [false, true] {
                    let mut cfg = PlannerConfig::tdmpc2(a);
                    cfg.mode = mode;
                    cfg.plan_mode = plan_mode;
                    let (header, ov) = pompc::planner::pipeline_constants(&cfg, a, episodic);
                    for k in pompc::planner::KERNELS {
                        common::compile_spirv(k.shader, k.entry, &header, &ov);
                    }
                }
            }
        }
    }
}

#[test]
fn gemm_every_tile_and_flag() {
    use pompc::kernels::gemm::{self, GemmTile};
    for tile in GemmTile::ALL {
        for bits in 0..32u32 {
            let f = |i: u32| bits & (1 << i) != 0;
            let (spec, header, mut ov) = gemm::pipeline_constants(tile, f(0), f(1), f(2), f(3));
            // K segments, as record_with_tile adds them.
            if f(4) {
                ov.push(("SEG", 1.0));
            }
            common::compile_spirv(spec.shader, spec.entry, &header, &ov);
        }
    }
}

#[test]
fn optimizer_and_td_kernels() {
    use pompc::kernels::optim::{self, OptimKernel};
    for k in OptimKernel::all() {
        let (spec, header, ov) = optim::pipeline_constants(k);
        common::compile_spirv(spec.shader, spec.entry, &header, &ov);
    }
    common::compile_spirv("td", "td_target", &Header::default(), &[]);
    for cfg in [
        pompc::kernels::two_hot::TwoHotConfig::TDMPC2,
        pompc::kernels::two_hot::TwoHotConfig::new(7, -2.0, 3.0).unwrap(),
    ] {
        let (spec, ov) = pompc::kernels::td::decode_grad_constants(&cfg);
        common::compile_spirv(spec.shader, spec.entry, &Header::default(), &ov);
    }
}

#[test]
fn policy_loss_every_variant() {
    use pompc::kernels::policy_loss;
    for a in [1, 6, 38] {
        for k in policy_loss::all_kernels(a) {
            let (spec, header, ov) = policy_loss::pipeline_constants(&k);
            common::compile_spirv(spec.shader, spec.entry, &header, &ov);
        }
    }
}

#[test]
fn gemm_coop_every_tile_and_flag() {
    use pompc::kernels::gemm_coop::{self, CoopScale, CoopTile};
    for tile in CoopTile::ALL {
        for sg in [32, 64] {
            for bits in 0..16u32 {
                let f = |i: u32| bits & (1 << i) != 0;
                let (spec, header, ov) =
                    gemm_coop::pipeline_constants(tile, sg, f(0), f(1), f(2), f(3));
                common::compile_spirv(spec.shader, spec.entry, &header, &ov);
                // Operand scaling: both operands for every layout, each alone for some.
                let scales = if bits % 5 == 0 {
                    &[
                        CoopScale::BOTH,
                        CoopScale { a: true, b: false },
                        CoopScale { a: false, b: true },
                    ][..]
                } else {
                    &[CoopScale::BOTH][..]
                };
                for &scale in scales {
                    let (spec, header, ov) = gemm_coop::pipeline_constants_scaled(
                        tile,
                        sg,
                        f(0),
                        f(1),
                        f(2),
                        f(3),
                        scale,
                    );
                    common::compile_spirv(spec.shader, spec.entry, &header, &ov);
                }
            }
        }
    }
}

#[test]
fn linear_f16_storage_and_tensor_core_kernels() {
    use pompc::kernels::gemm_coop::CoopTile;
    use pompc::kernels::linear::{CoopPlan, LinearKernel, Storage};
    let mut n = 0;
    for bits in 0..8u32 {
        let storage = Storage {
            x16: bits & 1 != 0,
            w16: bits & 2 != 0,
            y16: bits & 4 != 0,
        };
        for act in Activation::ALL {
            for ln in [false, true] {
                for (k, k1, out) in [(518, 512, 512), (7, 7, 8)] {
                    let mut cfg = LinearConfig::new(k, out).with_concat(k1).with_act(act);
                    cfg.layer_norm = ln;
                    let mut kernels = vec![LinearKernel::Alu(LinearPlan {
                        tile: Tile::MEDIUM,
                        split: 1,
                    })];
                    for tile in CoopTile::ALL {
                        for split in [1, 2] {
                            kernels.push(LinearKernel::TensorCore(CoopPlan { tile, split }));
                        }
                    }
                    for kernel in kernels {
                        for epilogue in [false, true] {
                            for head_map in [false, true] {
                                let (spec, header, ov) = linear::pipeline_constants_for(
                                    &cfg, kernel, epilogue, head_map, storage, 32,
                                );
                                common::compile_spirv(spec.shader, spec.entry, &header, &ov);
                                n += 1;
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(n > 1000);
}

#[test]
fn conditional_lines_and_enable_directives() {
    let files: HashMap<&str, &str> = [
        (
            "main",
            "#import lib\n#if WIDE\nalias T = f16;\n#else\nalias T = f32;\n#endif\nfn f(x: T) -> T {\n    return x;\n}\n",
        ),
        ("lib", "#if WIDE\nenable f16;\n#endif\nfn g() -> u32 {\n    return N;\n}\n"),
    ]
    .into_iter()
    .collect();
    for wide in [0, 1] {
        let header = Header(vec![("WIDE", wide), ("N", 3)]);
        let pre = shader::preprocess_with("main", files["main"], &header, &|n| {
            files.get(n).map(|s| s.to_string())
        })
        .unwrap();
        // `enable` before the header's constants; the other branch gone.
        assert_eq!(
            pre.text.starts_with("enable f16;"),
            wide == 1,
            "{}",
            pre.text
        );
        assert_eq!(pre.text.contains("alias T = f16;"), wide == 1);
        assert_eq!(pre.text.contains("alias T = f32;"), wide == 0);
        assert_eq!(pre.text.lines().count(), pre.origins.len());
        shader::validate("main", &pre).unwrap_or_else(|e| panic!("{e}\n{}", pre.text));
    }
    let header = Header(vec![("WIDE", 1)]);
    for (text, want) in [
        ("#if NOPE\n#endif\n", "not in the header"),
        ("#if WIDE\n", "without #endif"),
        ("#endif\n", "without #if"),
    ] {
        let err = shader::preprocess_with("x", text, &header, &|_| None)
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{text:?}: {err}");
    }
}

#[test]
fn for_blocks_repeat_lines_with_the_counter_substituted() {
    let text = "fn f() -> u32 {\n    var s = 0u;\n#for I in 0..FM\n#for J in 1..3\n    let a_{I}_{J} = {I}u * 10u + {J}u;\n    s += a_{I}_{J};\n#endfor\n#endfor\n    return s;\n}\n";
    let header = Header(vec![("FM", 2)]);
    let pre = shader::preprocess_with("f", text, &header, &|_| None).unwrap();
    for (i, j) in [(0, 1), (0, 2), (1, 1), (1, 2)] {
        let line = format!("let a_{i}_{j} = {i}u * 10u + {j}u;");
        assert_eq!(pre.text.matches(&line).count(), 1, "{line}\n{}", pre.text);
    }
    assert!(!pre.text.contains("a_2_") && !pre.text.contains("a_0_0") && !pre.text.contains("{I}"));
    // Every unrolled line maps back to its line in the file (5 and 6, 1-based).
    let origin = |needle: &str| {
        let n = pre.text.lines().position(|l| l.contains(needle)).unwrap();
        pre.origin(n as u32 + 1)
    };
    assert_eq!(origin("let a_1_2"), "f:5");
    assert_eq!(origin("s += a_1_1"), "f:6");
    shader::validate("f", &pre).unwrap_or_else(|e| panic!("{e}\n{}", pre.text));
    for (text, want) in [
        (
            "#for I in 0..NOPE\n#endfor\n",
            "neither a number nor in the header",
        ),
        ("#for I in 0..2\n", "without #endfor"),
        ("#endfor\n", "without #for"),
        ("#for I 0..2\n#endfor\n", "expected `#for NAME in A..B`"),
    ] {
        let err = shader::preprocess_with("x", text, &header, &|_| None)
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{text:?}: {err}");
    }
}

#[test]
fn cast_kernel() {
    let (spec, header, ov) = pompc::kernels::cast::pipeline_constants();
    common::compile_spirv(spec.shader, spec.entry, &header, &ov);
}
