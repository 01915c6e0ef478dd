//! Compute pipelines with explicit bind-group layouts, cached by shader, header, entry point,
//! override constants and check mode.

use super::shader::{self, Header, Preprocessed};
use super::{Gpu, ShaderChecks};
use crate::Result;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// How a kernel uses one binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Binding {
    /// `var<storage, read>`.
    Read,
    /// `var<storage, read_write>`.
    ReadWrite,
    /// `var<uniform>`: the per-dispatch parameter block.
    Uniform,
}

/// A kernel entry point and the bindings of group 0, as (binding number, use), in the order
/// that launch code passes buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KernelSpec {
    /// Library shader name, e.g. `"linear"`.
    pub shader: &'static str,
    /// Entry point.
    pub entry: &'static str,
    /// Group-0 bindings.
    pub bindings: &'static [(u32, Binding)],
}

/// A compiled compute pipeline and its bind-group layout.
#[derive(Debug)]
pub struct Pipeline {
    pub(crate) pipeline: wgpu::ComputePipeline,
    pub(crate) layout: wgpu::BindGroupLayout,
    pub(crate) bindings: Vec<(u32, Binding)>,
    pub(crate) label: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum SourceKey {
    Library(&'static str, Header),
    Text(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    source: SourceKey,
    entry: String,
    overrides: Vec<(String, u64)>,
    bindings: Vec<(u32, Binding)>,
}

/// A pipeline's entry point, bindings, override constants and check mode: what the library
/// and user-source paths pass alike to the cache and the build.
struct EntryPoint<'a> {
    /// Shader name for labels and errors.
    name: &'a str,
    entry: &'a str,
    bindings: &'a [(u32, Binding)],
    overrides: &'a [(&'a str, f64)],
    checks: ShaderChecks,
}

#[derive(Default)]
pub(crate) struct PipelineCache {
    map: Mutex<HashMap<Key, Arc<Pipeline>>>,
}

impl PipelineCache {
    pub(crate) fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }
}

impl Gpu {
    /// The pipeline for a library kernel with the given header and override constants;
    /// made once, then served from the cache.
    pub fn pipeline(
        &self,
        spec: &KernelSpec,
        header: &Header,
        overrides: &[(&str, f64)],
    ) -> Result<Arc<Pipeline>> {
        let source = SourceKey::Library(spec.shader, header.clone());
        let e = EntryPoint {
            name: spec.shader,
            entry: spec.entry,
            bindings: spec.bindings,
            overrides,
            checks: self.shader_checks(),
        };
        self.cached(source, &e, || {
            self.build(&e, &shader::preprocess(spec.shader, header)?)
        })
    }

    /// A pipeline from preprocessed source that is not in the library (user WGSL), cached by
    /// its text, built with `checks` (`None`: this device's shader-check mode; user code keeps
    /// bounds checks unless its owner vouches for it).
    pub fn pipeline_from_source(
        &self,
        name: &str,
        pre: &Preprocessed,
        entry: &str,
        bindings: &[(u32, Binding)],
        overrides: &[(&str, f64)],
        checks: Option<ShaderChecks>,
    ) -> Result<Arc<Pipeline>> {
        let checks = checks.unwrap_or_else(|| self.shader_checks());
        let source = SourceKey::Text(format!("{checks:?}\n{}", pre.text));
        let e = EntryPoint {
            name,
            entry,
            bindings,
            overrides,
            checks,
        };
        self.cached(source, &e, || self.build(&e, pre))
    }

    /// The cached pipeline for `source` and `e` (its entry point, bindings and overrides), or
    /// the one `build` makes, then cached (a poisoned cache lock only costs the caching).
    fn cached(
        &self,
        source: SourceKey,
        e: &EntryPoint,
        build: impl FnOnce() -> Result<Arc<Pipeline>>,
    ) -> Result<Arc<Pipeline>> {
        let key = Key {
            source,
            entry: e.entry.to_string(),
            overrides: e
                .overrides
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_bits()))
                .collect(),
            bindings: e.bindings.to_vec(),
        };
        if let Some(p) = self
            .pipelines
            .map
            .lock()
            .ok()
            .and_then(|m| m.get(&key).cloned())
        {
            return Ok(p);
        }
        let p = build()?;
        if let Ok(mut m) = self.pipelines.map.lock() {
            m.insert(key, p.clone());
        }
        Ok(p)
    }

    /// Number of pipelines made so far (to check that repeated calls reuse them).
    pub fn cached_pipelines(&self) -> usize {
        self.pipelines.len()
    }

    fn build(&self, e: &EntryPoint, pre: &Preprocessed) -> Result<Arc<Pipeline>> {
        let EntryPoint {
            name,
            entry,
            bindings,
            overrides,
            checks,
        } = *e;
        // naga first: its errors name the file and line as written.
        shader::validate(name, pre)?;
        let label = format!("{name}::{entry}");
        self.scoped(&format!("creating pipeline {label}"), || {
            let desc = wgpu::ShaderModuleDescriptor {
                label: Some(&label),
                source: wgpu::ShaderSource::Wgsl(pre.text.as_str().into()),
            };
            let module = match checks {
                ShaderChecks::Checked => self.device.create_shader_module(desc),
                // SAFETY: every library kernel guards its own indices, and the test suite runs
                // each kernel with checks on as well, so an out-of-bounds access fails there.
                ShaderChecks::Trusted => unsafe {
                    self.device
                        .create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked())
                },
            };
            let entries: Vec<wgpu::BindGroupLayoutEntry> = bindings
                .iter()
                .map(|&(b, kind)| wgpu::BindGroupLayoutEntry {
                    binding: b,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: match kind {
                        Binding::Uniform => wgpu::BindingType::Buffer {
                            ty: wgpu::BufferBindingType::Uniform,
                            has_dynamic_offset: false,
                            min_binding_size: None,
                        },
                        Binding::Read | Binding::ReadWrite => wgpu::BindingType::Buffer {
                            ty: wgpu::BufferBindingType::Storage {
                                read_only: kind == Binding::Read,
                            },
                            has_dynamic_offset: false,
                            min_binding_size: None,
                        },
                    },
                    count: None,
                })
                .collect();
            let layout = self
                .device
                .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                    label: Some(&label),
                    entries: &entries,
                });
            let pl = self
                .device
                .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                    label: Some(&label),
                    bind_group_layouts: &[Some(&layout)],
                    immediate_size: 0,
                });
            let pipeline = self
                .device
                .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(&label),
                    layout: Some(&pl),
                    module: &module,
                    entry_point: Some(entry),
                    compilation_options: wgpu::PipelineCompilationOptions {
                        constants: overrides,
                        // Kernels initialize the workgroup memory they read.
                        zero_initialize_workgroup_memory: false,
                    },
                    cache: None,
                });
            Ok(Arc::new(Pipeline {
                pipeline,
                layout,
                bindings: bindings.to_vec(),
                label: label.clone(),
            }))
        })
    }
}
