//! World-model parameters on the host: TD-MPC2's initialization, and safetensors files in
//! TD-MPC2's state_dict naming (see README.md, "Weights").

use super::spec::{ModelSpec, Net};
use crate::{Error, Result};
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use std::collections::BTreeMap;
use std::path::Path;

/// One host tensor, row-major f32.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Shape (empty for a scalar).
    pub shape: Vec<usize>,
    /// Values.
    pub data: Vec<f32>,
}

/// Every parameter of a world model, by TD-MPC2 name.
#[derive(Clone, Debug)]
pub struct Weights {
    /// The model these belong to.
    pub spec: ModelSpec,
    /// Parameters named as in [`ModelSpec::tensors`].
    pub tensors: BTreeMap<String, Tensor>,
    /// Optional tensors a checkpoint may carry: the Polyak target Q heads
    /// (`_target_Qs_params.*`), kept for training.
    pub extra: BTreeMap<String, Tensor>,
}

const TARGET_Q: &str = "_target_Qs_params.";
const Q_PREFIX: &str = "_Qs.params.";

impl Weights {
    /// TD-MPC2's initialization: weights from a normal with std 0.02 truncated at +-2
    /// (absolute, as torch's `trunc_normal_`), zero biases, LayerNorm gain 1 and shift 0,
    /// and zero final weights for the reward head and every Q head, so that the first
    /// predictions are uniform over the bins (value 0).
    ///
    /// The spec is validated first ([`ModelSpec::validate`] bounds every size), and host
    /// memory that cannot be had is an [`Error::Limit`], not an abort.
    pub fn init(spec: &ModelSpec, seed: u64) -> Result<Weights> {
        spec.validate()?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let normal = Normal::new(0.0f32, 0.02).map_err(|e| Error::Internal {
            context: "weight initialization".into(),
            message: e.to_string(),
        })?;
        let mut tensors = BTreeMap::new();
        let zero_final = ["_reward.2.weight", "_Qs.params.2.weight"];
        for (name, shape) in spec.tensors() {
            let n: usize = shape.iter().product();
            let mut data = host_vec(&name, n)?;
            if name.ends_with("ln.weight") {
                data.resize(n, 1.0);
            } else if name.ends_with(".weight") && !zero_final.contains(&name.as_str()) {
                data.extend((0..n).map(|_| {
                    loop {
                        let v = normal.sample(&mut rng);
                        if v.abs() <= 2.0 {
                            break v;
                        }
                    }
                }));
            } else {
                data.resize(n, 0.0);
            }
            tensors.insert(name, Tensor { shape, data });
        }
        Ok(Weights {
            spec: spec.clone(),
            tensors,
            extra: BTreeMap::new(),
        })
    }

    /// A tensor by name.
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| Error::Weights(format!("tensor {name:?} is missing")))
    }

    /// Read a safetensors file written by [`Weights::save`] or `scripts/export_tdmpc2.py`.
    pub fn load(path: impl AsRef<Path>) -> Result<Weights> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_bytes(&bytes).map_err(|e| match e {
            Error::Weights(m) => Error::Weights(format!("{}: {m}", path.display())),
            e => e,
        })
    }

    /// Parse safetensors bytes; the model spec comes from the header metadata.
    pub fn from_bytes(bytes: &[u8]) -> Result<Weights> {
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| Error::Weights(format!("not a readable safetensors file ({e})")))?;
        let spec = ModelSpec::from_metadata(meta.metadata().as_ref().ok_or_else(|| {
            Error::Weights(
                "the file has no metadata with the model's sizes: write it with pompc or \
                 scripts/export_tdmpc2.py"
                    .into(),
            )
        })?)?;
        Self::from_bytes_with_spec(bytes, &spec)
    }

    /// Parse safetensors bytes for a known spec (the file's metadata is not needed).
    /// Missing, extra, mis-shaped and non-finite tensors are errors that name the tensor.
    pub fn from_bytes_with_spec(bytes: &[u8], spec: &ModelSpec) -> Result<Weights> {
        spec.validate()?;
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| Error::Weights(format!("not a readable safetensors file ({e})")))?;
        let expected: BTreeMap<String, Vec<usize>> = spec.tensors().into_iter().collect();
        let mut tensors = BTreeMap::new();
        let mut extra = BTreeMap::new();
        for (name, view) in st.iter() {
            if name.starts_with("fixture.")
                || name.starts_with("pompc.")
                || name == "log_std_min"
                || name == "log_std_dif"
            {
                // Test fixtures and a trainer checkpoint's state share the file; the log-std
                // range lives in the metadata.
                continue;
            }
            let want = if let Some(rest) = name.strip_prefix(TARGET_Q) {
                expected.get(&format!("{Q_PREFIX}{rest}"))
            } else {
                expected.get(name)
            };
            let Some(want) = want else {
                return Err(Error::Weights(format!(
                    "unexpected tensor {name:?} with shape {:?}: not part of a model with {}",
                    view.shape(),
                    describe(spec)
                )));
            };
            if view.shape() != want.as_slice() {
                return Err(Error::Weights(format!(
                    "tensor {name:?} has shape {:?}, the model needs {want:?} ({})",
                    view.shape(),
                    describe(spec)
                )));
            }
            let data = to_f32(name, view.dtype(), view.data())?;
            if let Some(i) = data.iter().position(|v| !v.is_finite()) {
                return Err(Error::Weights(format!(
                    "tensor {name:?} holds a non-finite value ({}) at element {i}",
                    data[i]
                )));
            }
            let t = Tensor {
                shape: want.clone(),
                data,
            };
            if name.starts_with(TARGET_Q) {
                extra.insert(name.to_string(), t);
            } else {
                tensors.insert(name.to_string(), t);
            }
        }
        if let Some(missing) = expected.keys().find(|k| !tensors.contains_key(*k)) {
            return Err(Error::Weights(format!(
                "tensor {missing:?} is missing (shape {:?}, {})",
                expected[missing],
                describe(spec)
            )));
        }
        Ok(Weights {
            spec: spec.clone(),
            tensors,
            extra,
        })
    }

    /// Serialize to safetensors bytes with the spec in the metadata.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let views: Vec<(String, safetensors::tensor::TensorView)> = self
            .tensors
            .iter()
            .chain(&self.extra)
            .map(|(k, t)| {
                safetensors::tensor::TensorView::new(
                    safetensors::Dtype::F32,
                    t.shape.clone(),
                    bytemuck::cast_slice(&t.data),
                )
                .map(|v| (k.clone(), v))
                .map_err(|e| Error::Weights(format!("tensor {k:?}: {e}")))
            })
            .collect::<Result<_>>()?;
        safetensors::serialize(views, Some(self.spec.to_metadata()))
            .map_err(|e| Error::Weights(format!("serializing: {e}")))
    }

    /// Write a safetensors file, atomically ([`crate::fs::write_atomic`]: a failed save
    /// leaves the old file, if any, and no temporary file). Weights that do not fit their
    /// spec or hold a non-finite value are refused: a saved file always loads.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        self.check().map_err(|e| match e {
            Error::Weights(m) | Error::InvalidArgument(m) => {
                Error::Weights(format!("not saving {}: {m}", path.display()))
            }
            e => e,
        })?;
        crate::fs::write_atomic(path, &self.to_bytes()?)
    }

    /// `Ok` when the tensors are exactly those of the spec (target Q heads optional), with
    /// their shapes, and every value is finite: what [`Weights::load`] accepts.
    pub fn check(&self) -> Result<()> {
        self.spec.validate()?;
        let expected: BTreeMap<String, Vec<usize>> = self.spec.tensors().into_iter().collect();
        for (name, want) in &expected {
            let t = self.get(name)?;
            check_tensor(name, t, want)?;
        }
        if let Some(extra) = self.tensors.keys().find(|k| !expected.contains_key(*k)) {
            return Err(Error::Weights(format!(
                "unexpected tensor {extra:?}: not part of a model with {}",
                describe(&self.spec)
            )));
        }
        for (name, t) in &self.extra {
            let want = name
                .strip_prefix(TARGET_Q)
                .and_then(|rest| expected.get(&format!("{Q_PREFIX}{rest}")))
                .ok_or_else(|| {
                    Error::Weights(format!(
                        "extra tensor {name:?} is not a target Q head of a model with {}",
                        describe(&self.spec)
                    ))
                })?;
            check_tensor(name, t, want)?;
        }
        Ok(())
    }

    /// Parameters of one network, in layer order: (weight, bias, LayerNorm gain and shift).
    pub(crate) fn layer(&self, prefix: &str, normed: bool) -> Result<LayerTensors<'_>> {
        let ln = if normed {
            Some((
                self.get(&format!("{prefix}.ln.weight"))?,
                self.get(&format!("{prefix}.ln.bias"))?,
            ))
        } else {
            None
        };
        Ok(LayerTensors {
            w: self.get(&format!("{prefix}.weight"))?,
            b: self.get(&format!("{prefix}.bias"))?,
            ln,
        })
    }

    /// Number of parameters held.
    pub fn param_count(&self) -> usize {
        self.tensors.values().map(|t| t.data.len()).sum()
    }

    /// Parameters of a network's layers, for the CPU mirror.
    pub fn net(&self, net: Net) -> Result<Vec<LayerTensors<'_>>> {
        self.spec
            .layers(net)
            .iter()
            .map(|l| self.layer(&l.prefix, l.normed))
            .collect()
    }
}

/// An empty vector with room for `n` values of tensor `name`: an allocation the host refuses
/// is an error, not an abort.
fn host_vec(name: &str, n: usize) -> Result<Vec<f32>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|e| {
        Error::Limit(format!(
            "host memory for tensor {name:?} ({n} values, {} MiB): {e}",
            (n as u64 * 4) >> 20
        ))
    })?;
    Ok(v)
}

/// The tensors of one layer.
#[derive(Clone, Copy, Debug)]
pub struct LayerTensors<'a> {
    /// `[members?, out, in]`.
    pub w: &'a Tensor,
    /// `[members?, out]`.
    pub b: &'a Tensor,
    /// LayerNorm gain and shift, `[members?, out]` each.
    pub ln: Option<(&'a Tensor, &'a Tensor)>,
}

fn check_tensor(name: &str, t: &Tensor, want: &[usize]) -> Result<()> {
    if t.shape != want || t.data.len() != want.iter().product::<usize>() {
        return Err(Error::Weights(format!(
            "tensor {name:?} has shape {:?} and {} values, the model needs {want:?}",
            t.shape,
            t.data.len()
        )));
    }
    if let Some(i) = t.data.iter().position(|v| !v.is_finite()) {
        return Err(Error::Weights(format!(
            "tensor {name:?} holds a non-finite value ({}) at element {i}",
            t.data[i]
        )));
    }
    Ok(())
}

fn describe(spec: &ModelSpec) -> String {
    format!(
        "obs {}, action {}, latent {}, mlp {}, enc {} x {}, {} Q heads, {} bins{}",
        spec.obs_dim,
        spec.action_dim,
        spec.latent_dim,
        spec.mlp_dim,
        spec.enc_dim,
        spec.num_enc_layers,
        spec.num_q,
        spec.num_bins,
        if spec.episodic { ", episodic" } else { "" }
    )
}

fn to_f32(name: &str, dtype: safetensors::Dtype, bytes: &[u8]) -> Result<Vec<f32>> {
    use safetensors::Dtype;
    Ok(match dtype {
        Dtype::F32 => bytemuck::pod_collect_to_vec(bytes),
        Dtype::F64 => bytemuck::pod_collect_to_vec::<u8, f64>(bytes)
            .into_iter()
            .map(|v| v as f32)
            .collect(),
        Dtype::F16 => bytemuck::pod_collect_to_vec::<u8, half::f16>(bytes)
            .into_iter()
            .map(f32::from)
            .collect(),
        Dtype::BF16 => bytemuck::pod_collect_to_vec::<u8, half::bf16>(bytes)
            .into_iter()
            .map(f32::from)
            .collect(),
        other => {
            return Err(Error::Weights(format!(
                "tensor {name:?} has dtype {other:?}; pompc reads f32, f64, f16 and bf16"
            )));
        }
    })
}
