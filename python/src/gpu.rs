//! `pompc.Gpu`, `pompc.adapters()` and `pompc.WorldModel`.

use crate::errors::{guard, py_result, to_py, uint, value_error};
use pompc::model::{ModelSpec, Weights};
use pompc::train::ModelPreset;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::sync::Arc;

fn parse_backend(name: &str) -> PyResult<wgpu::Backends> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "vulkan" | "vk" => wgpu::Backends::VULKAN,
        "metal" | "mtl" => wgpu::Backends::METAL,
        "dx12" | "d3d12" => wgpu::Backends::DX12,
        "gl" | "opengl" | "gles" => wgpu::Backends::GL,
        "primary" => wgpu::Backends::PRIMARY,
        "all" => wgpu::Backends::all(),
        _ => {
            return Err(value_error(format!(
                "unknown backend {name:?}; one of vulkan, metal, dx12, gl, primary, all"
            )));
        }
    })
}

fn adapter_dict<'py>(py: Python<'py>, i: &wgpu::AdapterInfo) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("name", &i.name)?;
    d.set_item("backend", format!("{:?}", i.backend).to_lowercase())?;
    d.set_item("device_type", format!("{:?}", i.device_type))?;
    d.set_item("driver", &i.driver)?;
    d.set_item("driver_info", &i.driver_info)?;
    d.set_item("vendor", i.vendor)?;
    d.set_item("device", i.device)?;
    Ok(d)
}

/// The adapters wgpu can see (honouring WGPU_BACKEND), one dict each: name, backend,
/// device_type, driver, driver_info, vendor, device.
#[pyfunction]
#[pyo3(signature = (backend=None))]
pub fn adapters<'py>(py: Python<'py>, backend: Option<&str>) -> PyResult<Vec<Bound<'py, PyDict>>> {
    let backends = backend.map(parse_backend).transpose()?;
    let list = py.detach(|| {
        guard(|| {
            Ok(pompc::gpu::enumerate_adapters(backends)
                .iter()
                .map(|a| a.get_info())
                .collect::<Vec<_>>())
        })
    })?;
    list.iter().map(|i| adapter_dict(py, i)).collect()
}

/// A GPU device: adapter choice, features, limits, the shader and pipeline caches.
///
/// ``Gpu(backend=None, adapter=None, precision=None)``: ``backend`` is one of ``"vulkan"``,
/// ``"metal"``, ``"dx12"``, ``"gl"`` (default: WGPU_BACKEND, else all); ``adapter`` a
/// substring of the adapter's name (default: WGPU_ADAPTER_NAME, else the best adapter);
/// ``precision`` of the world model's layers, ``"f32"``, ``"f16"`` or ``"coop"`` (tensor
/// cores; default: POMPC_PRECISION, else automatic). No adapter, or a precision the device
/// lacks, is a ``RuntimeError`` that says how to get one.
#[pyclass(frozen, module = "pompc")]
pub struct Gpu {
    pub inner: Arc<pompc::Gpu>,
}

impl Gpu {
    /// `Gpu(backend, adapter, precision)` from Rust.
    pub fn create(
        py: Python<'_>,
        backend: Option<&str>,
        adapter: Option<String>,
        precision: Option<&str>,
    ) -> PyResult<Self> {
        let mut opts = pompc::GpuOptions::default();
        if let Some(b) = backend {
            opts.backends = Some(parse_backend(b)?);
        }
        if let Some(a) = adapter {
            opts = opts.with_adapter_name(a);
        }
        if let Some(p) = precision {
            opts = opts.with_precision(py_result(pompc::Precision::parse(p))?);
        }
        let gpu = py.detach(|| guard(|| py_result(pompc::Gpu::new(opts))))?;
        Ok(Gpu {
            inner: Arc::new(gpu),
        })
    }
}

#[pymethods]
impl Gpu {
    #[new]
    #[pyo3(signature = (backend=None, adapter=None, precision=None))]
    fn new(
        py: Python<'_>,
        backend: Option<&str>,
        adapter: Option<String>,
        precision: Option<&str>,
    ) -> PyResult<Self> {
        Gpu::create(py, backend, adapter, precision)
    }

    /// The adapter and device: name, backend, device_type, driver, driver_info, vendor,
    /// device, and the features pompc uses (subgroups, shader_f16, timestamps,
    /// cooperative_matrix) and the default precision.
    #[getter]
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = adapter_dict(py, self.inner.info())?;
        let f = self.inner.features();
        d.set_item("subgroups", f.subgroups)?;
        d.set_item(
            "shader_f16",
            self.inner.supports(pompc::Precision::F16).is_ok(),
        )?;
        d.set_item("timestamps", f.timestamps)?;
        d.set_item("cooperative_matrix", f.cooperative_matrix)?;
        d.set_item("precision", self.inner.precision().name())?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!("pompc.Gpu({})", self.inner.describe())
    }
}

/// A TD-MPC2 world model (encoder, dynamics, reward, policy, Q ensemble) on a GPU.
///
/// Build one with ``WorldModel.load(gpu, path)`` (a pompc or converted TD-MPC2 safetensors
/// file) or ``WorldModel.init(gpu, size, obs_dim, action_dim, seed)``; ``save(path)``
/// writes its weights. A planner keeps its model (and the model its Gpu) alive.
#[pyclass(frozen, module = "pompc")]
pub struct WorldModel {
    pub gpu: Py<Gpu>,
    pub rs_gpu: Arc<pompc::Gpu>,
    pub model: Arc<pompc::model::WorldModel>,
    // Kept for `save`: the GPU copy has no download path.
    pub weights: Arc<Weights>,
}

impl WorldModel {
    pub fn from_weights(py: Python<'_>, gpu: Py<Gpu>, weights: Weights) -> PyResult<Self> {
        let rs_gpu = gpu.get().inner.clone();
        let g = rs_gpu.clone();
        let (model, weights) = py.detach(move || {
            guard(|| {
                let m = py_result(pompc::model::WorldModel::new(&g, &weights))?;
                Ok((m, weights))
            })
        })?;
        Ok(WorldModel {
            gpu,
            rs_gpu,
            model: Arc::new(model),
            weights: Arc::new(weights),
        })
    }
}

/// A model size: "tiny", "small" or a TD-MPC2 size in millions (1, 5, 19, 48, 317).
pub fn parse_size(size: &Bound<'_, PyAny>) -> PyResult<ModelPreset> {
    if size.is_instance_of::<pyo3::types::PyInt>() {
        let n: u32 = uint(size).map_err(|e| crate::errors::named("model size", e))?;
        return py_result(ModelPreset::parse(&n.to_string()));
    }
    let s: String = size.extract().map_err(|_| {
        crate::errors::type_error(
            "size must be \"tiny\", \"small\" or a TD-MPC2 size (1, 5, 19, 48, 317)",
        )
    })?;
    py_result(ModelPreset::parse(&s))
}

#[pymethods]
impl WorldModel {
    /// Load weights from a safetensors file (pompc's format, e.g. converted from a TD-MPC2
    /// checkpoint by scripts/export_tdmpc2.py, or a trainer checkpoint).
    #[staticmethod]
    fn load(py: Python<'_>, gpu: Py<Gpu>, path: std::path::PathBuf) -> PyResult<Self> {
        let weights = py.detach(|| guard(|| py_result(Weights::load(&path))))?;
        WorldModel::from_weights(py, gpu, weights)
    }

    /// A freshly initialized model (TD-MPC2's initialization) of ``size`` ("tiny", "small" or
    /// a TD-MPC2 size in millions: 1, 5, 19, 48, 317) for ``obs_dim`` observations and
    /// ``action_dim`` actions, drawn with ``seed``.
    #[staticmethod]
    #[pyo3(signature = (gpu, size, obs_dim, action_dim, seed=0))]
    fn init(
        py: Python<'_>,
        gpu: Py<Gpu>,
        size: &Bound<'_, PyAny>,
        #[pyo3(from_py_with = crate::errors::uint_usize)] obs_dim: usize,
        #[pyo3(from_py_with = crate::errors::uint_usize)] action_dim: usize,
        #[pyo3(from_py_with = crate::errors::uint_u64)] seed: u64,
    ) -> PyResult<Self> {
        let preset = parse_size(size)?;
        let spec: ModelSpec = py_result(preset.spec(obs_dim, action_dim))?;
        let weights = py.detach(|| guard(|| py_result(Weights::init(&spec, seed))))?;
        WorldModel::from_weights(py, gpu, weights)
    }

    /// Write the weights (safetensors, TD-MPC2's tensor names, sizes in the metadata); the
    /// file is replaced atomically.
    fn save(&self, py: Python<'_>, path: std::path::PathBuf) -> PyResult<()> {
        let w = self.weights.clone();
        py.detach(move || guard(|| w.save(&path).map_err(to_py)))
    }

    /// The Gpu the model lives on.
    #[getter]
    fn gpu(&self, py: Python<'_>) -> Py<Gpu> {
        self.gpu.clone_ref(py)
    }

    /// Observation length.
    #[getter]
    fn obs_dim(&self) -> usize {
        self.model.spec.obs_dim
    }

    /// Action length.
    #[getter]
    fn action_dim(&self) -> usize {
        self.model.spec.action_dim
    }

    /// The model's sizes (the safetensors metadata): obs_dim, action_dim, latent_dim,
    /// mlp_dim, enc_dim, num_enc_layers, num_q, num_bins, vmin, vmax, simnorm_dim,
    /// log_std_min, log_std_max, episodic.
    #[getter]
    fn spec<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        let mut meta: Vec<_> = self.model.spec.to_metadata().into_iter().collect();
        meta.sort();
        for (k, v) in meta {
            if k == "format" {
                continue;
            }
            // Numbers as numbers, flags as bools.
            if let Ok(i) = v.parse::<i64>() {
                d.set_item(k, i)?;
            } else if let Ok(f) = v.parse::<f64>() {
                d.set_item(k, f)?;
            } else if let Ok(b) = v.parse::<bool>() {
                d.set_item(k, b)?;
            } else {
                d.set_item(k, v)?;
            }
        }
        Ok(d)
    }

    /// Number of parameters.
    #[getter]
    fn param_count(&self) -> usize {
        self.weights.param_count()
    }

    fn __repr__(&self) -> String {
        let s = &self.model.spec;
        format!(
            "pompc.WorldModel(obs_dim={}, action_dim={}, latent_dim={}, mlp_dim={}, num_q={}, \
             params={})",
            s.obs_dim,
            s.action_dim,
            s.latent_dim,
            s.mlp_dim,
            s.num_q,
            self.weights.param_count()
        )
    }
}
