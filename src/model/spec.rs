//! Shapes of a TD-MPC2 world model: presets and the parameter tensors they imply.

use crate::kernels::linear::{Activation, LinearConfig};
use crate::{Error, Result};
use std::collections::HashMap;

/// Most observation features a model takes.
pub const MAX_OBS_DIM: usize = 1 << 16;
/// Most action dimensions.
pub const MAX_ACTION_DIM: usize = 1024;
/// Widest latent, hidden or encoder layer (TD-MPC2's largest preset: 4096).
pub const MAX_WIDTH: usize = 16384;
/// Deepest encoder (`num_enc_layers`).
pub const MAX_ENC_LAYERS: usize = 64;
/// Most Q heads.
pub const MAX_Q_HEADS: usize = 64;
/// Most bins of the two-hot heads.
pub const MAX_BINS: usize = 4096;
/// Largest `|vmin|`, `|vmax|` (symlog space). Past about 88.7 the outer bins decode to
/// infinite values in f32 (past 709 in f64 too); the planner is built for that (NaN values count
/// as 0, as in TD-MPC2; tests/planner_extremes.rs runs bins over +-1000), so the bound only
/// refuses metadata that cannot be meant.
pub const MAX_SYMLOG: f32 = 1000.0;
/// Largest `|log_std_min|`, `|log_std_max|`.
pub const MAX_LOG_STD: f32 = 20.0;
/// Most parameters, the target Q heads included (8 GiB of f32).
pub const MAX_PARAMS: usize = 1 << 31;

/// Sizes and constants of a TD-MPC2 world model (single task, state observations).
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    /// Observation features.
    pub obs_dim: usize,
    /// Action dimensions.
    pub action_dim: usize,
    /// Latent state width (a multiple of `simnorm_dim`).
    pub latent_dim: usize,
    /// Hidden width of dynamics, reward, policy, Q and termination.
    pub mlp_dim: usize,
    /// Hidden width of the encoder.
    pub enc_dim: usize,
    /// Encoder depth as TD-MPC2 counts it: `max(n - 1, 1)` hidden layers plus the output.
    pub num_enc_layers: usize,
    /// Q heads in the ensemble.
    pub num_q: usize,
    /// Bins of the discrete reward and value heads.
    pub num_bins: usize,
    /// Lowest bin, in symlog space.
    pub vmin: f32,
    /// Highest bin, in symlog space.
    pub vmax: f32,
    /// SimNorm group size (8 in TD-MPC2; pompc's kernel supports 8).
    pub simnorm_dim: usize,
    /// Policy log-std range.
    pub log_std_min: f32,
    /// Policy log-std range.
    pub log_std_max: f32,
    /// Whether the model has a termination head.
    pub episodic: bool,
}

/// One layer of a network: `[in1 | in2] -> out`, with LayerNorm and an activation or plain.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerSpec {
    /// Tensor name prefix, e.g. `_dynamics.0` or `_Qs.params.0`.
    pub prefix: String,
    /// Features from the first input (the latent or the observation).
    pub in1: usize,
    /// Features from the second input (the action), 0 if none.
    pub in2: usize,
    /// Output features.
    pub out: usize,
    /// `NormedLinear` (LayerNorm, then `act`) or a plain final `Linear`.
    pub normed: bool,
    /// Activation after the LayerNorm.
    pub act: Activation,
}

impl LayerSpec {
    /// The kernel configuration for this layer with `members` weight sets.
    pub fn linear(&self, members: usize, shared_input: bool) -> LinearConfig {
        let mut cfg = LinearConfig::new(self.in1 + self.in2, self.out)
            .with_concat(self.in1)
            .with_members(members, shared_input)
            .with_act(self.act);
        cfg.layer_norm = self.normed;
        cfg
    }
}

/// The networks of the world model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Net {
    /// h: observation -> latent.
    Encoder,
    /// d: [latent, action] -> latent.
    Dynamics,
    /// R: [latent, action] -> reward logits.
    Reward,
    /// pi: latent -> [mean, raw log-std].
    Policy,
    /// Q ensemble: [latent, action] -> value logits, `num_q` heads.
    Q,
    /// Termination: latent -> logit (episodic models).
    Termination,
}

impl Net {
    /// Every network, in a fixed order.
    pub const ALL: [Net; 6] = [
        Net::Encoder,
        Net::Dynamics,
        Net::Reward,
        Net::Policy,
        Net::Q,
        Net::Termination,
    ];
}

impl ModelSpec {
    /// TD-MPC2's presets by parameter count (1, 5, 19, 48 or 317 million), as in its
    /// `MODEL_SIZE` table.
    pub fn tdmpc2(size: u32, obs_dim: usize, action_dim: usize) -> Result<ModelSpec> {
        let (enc_dim, mlp_dim, latent_dim, num_enc_layers, num_q) = match size {
            1 => (256, 384, 128, 2, 2),
            5 => (256, 512, 512, 2, 5),
            19 => (1024, 1024, 768, 3, 5),
            48 => (1792, 1792, 768, 4, 5),
            317 => (4096, 4096, 1376, 5, 8),
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "TD-MPC2 model size {size}: choose 1, 5, 19, 48 or 317 (millions of \
                     parameters)"
                )));
            }
        };
        Ok(ModelSpec {
            enc_dim,
            mlp_dim,
            latent_dim,
            num_enc_layers,
            num_q,
            ..ModelSpec::base(obs_dim, action_dim)
        })
    }

    /// A tiny model for tests (the `tiny` PyTorch fixture).
    pub fn tiny(obs_dim: usize, action_dim: usize) -> ModelSpec {
        ModelSpec {
            latent_dim: 16,
            mlp_dim: 24,
            enc_dim: 20,
            num_enc_layers: 2,
            num_q: 2,
            ..ModelSpec::base(obs_dim, action_dim)
        }
    }

    fn base(obs_dim: usize, action_dim: usize) -> ModelSpec {
        ModelSpec {
            obs_dim,
            action_dim,
            latent_dim: 512,
            mlp_dim: 512,
            enc_dim: 256,
            num_enc_layers: 2,
            num_q: 5,
            num_bins: 101,
            vmin: -10.0,
            vmax: 10.0,
            simnorm_dim: 8,
            log_std_min: -10.0,
            log_std_max: 2.0,
            episodic: false,
        }
    }

    /// With a termination head.
    pub fn episodic(mut self, episodic: bool) -> Self {
        self.episodic = episodic;
        self
    }

    /// Check that the sizes make sense and that pompc's kernels support them: every size
    /// within the `MAX_*` bounds of this module (checked before anything is allocated, so
    /// a file's metadata cannot ask for more), at least one Q head, finite ranges with `vmin < vmax` inside
    /// +-[`MAX_SYMLOG`] and `log_std_min < log_std_max` inside +-[`MAX_LOG_STD`].
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(format!("model spec: {m}")));
        if self.obs_dim == 0 || self.action_dim == 0 {
            return bad("observation and action dimensions must be positive".into());
        }
        for (name, v) in [
            ("latent_dim", self.latent_dim),
            ("mlp_dim", self.mlp_dim),
            ("enc_dim", self.enc_dim),
        ] {
            if v == 0 {
                return bad(format!("{name} = 0: widths must be positive"));
            }
        }
        for (name, v, max) in [
            ("obs_dim", self.obs_dim, MAX_OBS_DIM),
            ("action_dim", self.action_dim, MAX_ACTION_DIM),
            ("latent_dim", self.latent_dim, MAX_WIDTH),
            ("mlp_dim", self.mlp_dim, MAX_WIDTH),
            ("enc_dim", self.enc_dim, MAX_WIDTH),
            ("num_enc_layers", self.num_enc_layers, MAX_ENC_LAYERS),
            ("num_q", self.num_q, MAX_Q_HEADS),
            ("num_bins", self.num_bins, MAX_BINS),
        ] {
            if v > max {
                return bad(format!("{name} = {v}, at most {max}"));
            }
        }
        if self.num_q == 0 {
            return bad(format!(
                "num_q = 0: the model needs 1 to {MAX_Q_HEADS} Q heads (2 or more to plan or \
                 train: both average two different heads)"
            ));
        }
        if self.simnorm_dim != 8 {
            return bad(format!(
                "simnorm_dim = {}: pompc's SimNorm supports groups of 8",
                self.simnorm_dim
            ));
        }
        if !self.latent_dim.is_multiple_of(self.simnorm_dim) {
            return bad(format!(
                "latent_dim = {} is not a multiple of simnorm_dim = {}",
                self.latent_dim, self.simnorm_dim
            ));
        }
        let within = |v: f32, m: f32| v.is_finite() && v.abs() <= m;
        if self.num_bins < 2
            || !(within(self.vmin, MAX_SYMLOG)
                && within(self.vmax, MAX_SYMLOG)
                && self.vmin < self.vmax)
        {
            return bad(format!(
                "num_bins = {} over [vmin, vmax] = [{}, {}]: need at least 2 bins and finite \
                 vmin < vmax within +-{MAX_SYMLOG} (symlog space; TD-MPC2: 101 bins over \
                 [-10, 10])",
                self.num_bins, self.vmin, self.vmax
            ));
        }
        if !(within(self.log_std_min, MAX_LOG_STD)
            && within(self.log_std_max, MAX_LOG_STD)
            && self.log_std_min < self.log_std_max)
        {
            return bad(format!(
                "[log_std_min, log_std_max] = [{}, {}]: need finite log_std_min < log_std_max \
                 within +-{MAX_LOG_STD} (TD-MPC2: [-10, 2])",
                self.log_std_min, self.log_std_max
            ));
        }
        let params = self.checked_param_count();
        if params.is_none_or(|n| n > MAX_PARAMS) {
            return bad(format!(
                "{} parameters, at most {MAX_PARAMS} (TD-MPC2's largest preset has 317 \
                 million)",
                params.map_or("more than 2^64".to_string(), |n| n.to_string())
            ));
        }
        Ok(())
    }

    // Parameters of the model (with its target Q heads), without building the tensor list,
    // in checked arithmetic: `None` on overflow.
    fn checked_param_count(&self) -> Option<usize> {
        let mut total = 0usize;
        for net in Net::ALL {
            // Q heads twice: the Polyak target copy a trainer holds.
            let copies = if net == Net::Q { 2 } else { 1 };
            for l in self.layers(net) {
                let per = (l.in1.checked_add(l.in2)?.checked_add(3)?).checked_mul(l.out)?;
                total =
                    total.checked_add(per.checked_mul(self.members(net))?.checked_mul(copies)?)?;
            }
        }
        Some(total)
    }

    /// The layers of one network.
    pub fn layers(&self, net: Net) -> Vec<LayerSpec> {
        let (l, a, h) = (self.latent_dim, self.action_dim, self.mlp_dim);
        let layer = |prefix: String, in1, in2, out, normed, act| LayerSpec {
            prefix,
            in1,
            in2,
            out,
            normed,
            act,
        };
        let mish = Activation::Mish;
        // TD-MPC2's `mlp(in, [h, h], out)`: two NormedLinear layers and a final one.
        let mlp3 = |name: &str, in1, in2, out, last_normed, last_act| {
            vec![
                layer(format!("{name}.0"), in1, in2, h, true, mish),
                layer(format!("{name}.1"), h, 0, h, true, mish),
                layer(format!("{name}.2"), h, 0, out, last_normed, last_act),
            ]
        };
        match net {
            Net::Encoder => {
                let hidden = self.num_enc_layers.saturating_sub(1).max(1);
                let mut v = Vec::new();
                let mut inp = self.obs_dim;
                for i in 0..hidden {
                    v.push(layer(
                        format!("_encoder.state.{i}"),
                        inp,
                        0,
                        self.enc_dim,
                        true,
                        mish,
                    ));
                    inp = self.enc_dim;
                }
                v.push(layer(
                    format!("_encoder.state.{hidden}"),
                    inp,
                    0,
                    l,
                    true,
                    Activation::SimNorm,
                ));
                v
            }
            Net::Dynamics => mlp3("_dynamics", l, a, l, true, Activation::SimNorm),
            Net::Reward => mlp3("_reward", l, a, self.num_bins, false, Activation::Identity),
            Net::Policy => mlp3("_pi", l, 0, 2 * a, false, Activation::Identity),
            Net::Q => mlp3(
                "_Qs.params",
                l,
                a,
                self.num_bins,
                false,
                Activation::Identity,
            ),
            Net::Termination => {
                if self.episodic {
                    mlp3("_termination", l, 0, 1, false, Activation::Identity)
                } else {
                    Vec::new()
                }
            }
        }
    }

    /// Weight sets of a network (the Q ensemble has `num_q`).
    pub fn members(&self, net: Net) -> usize {
        if net == Net::Q { self.num_q } else { 1 }
    }

    /// Every parameter tensor: name and shape, in TD-MPC2's state_dict naming.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>)> {
        let mut out = Vec::new();
        for net in Net::ALL {
            let e = self.members(net);
            let stack = |mut s: Vec<usize>| {
                if net == Net::Q {
                    s.insert(0, e);
                }
                s
            };
            for ls in self.layers(net) {
                let k = ls.in1 + ls.in2;
                out.push((format!("{}.weight", ls.prefix), stack(vec![ls.out, k])));
                out.push((format!("{}.bias", ls.prefix), stack(vec![ls.out])));
                if ls.normed {
                    out.push((format!("{}.ln.weight", ls.prefix), stack(vec![ls.out])));
                    out.push((format!("{}.ln.bias", ls.prefix), stack(vec![ls.out])));
                }
            }
        }
        out
    }

    /// Number of parameters (without a target copy of the Q heads).
    pub fn param_count(&self) -> usize {
        self.tensors()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }

    /// Multiply-adds per row of a network's forward pass (all its weight sets).
    pub fn macs_per_row(&self, net: Net) -> usize {
        self.members(net)
            * self
                .layers(net)
                .iter()
                .map(|l| (l.in1 + l.in2) * l.out)
                .sum::<usize>()
    }

    /// The spec as safetensors header metadata.
    pub fn to_metadata(&self) -> HashMap<String, String> {
        let mut m = HashMap::new();
        let mut put = |k: &str, v: String| {
            m.insert(k.to_string(), v);
        };
        put("format", "pompc-tdmpc2".into());
        put("obs_dim", self.obs_dim.to_string());
        put("action_dim", self.action_dim.to_string());
        put("latent_dim", self.latent_dim.to_string());
        put("mlp_dim", self.mlp_dim.to_string());
        put("enc_dim", self.enc_dim.to_string());
        put("num_enc_layers", self.num_enc_layers.to_string());
        put("num_q", self.num_q.to_string());
        put("num_bins", self.num_bins.to_string());
        put("vmin", self.vmin.to_string());
        put("vmax", self.vmax.to_string());
        put("simnorm_dim", self.simnorm_dim.to_string());
        put("log_std_min", self.log_std_min.to_string());
        put("log_std_max", self.log_std_max.to_string());
        put("episodic", self.episodic.to_string());
        m
    }

    /// Read the spec from safetensors header metadata written by pompc or
    /// `scripts/export_tdmpc2.py`.
    pub fn from_metadata(m: &HashMap<String, String>) -> Result<ModelSpec> {
        fn get<T: std::str::FromStr>(m: &HashMap<String, String>, k: &str) -> Result<T> {
            let v = m.get(k).ok_or_else(|| {
                Error::Weights(format!(
                    "the file's metadata lacks {k:?}: write it with pompc or \
                     scripts/export_tdmpc2.py"
                ))
            })?;
            v.parse()
                .map_err(|_| Error::Weights(format!("metadata {k:?} = {v:?} is not a number")))
        }
        if let Some(f) = m.get("format").filter(|f| *f != "pompc-tdmpc2") {
            return Err(Error::Weights(format!(
                "metadata format {f:?}, expected \"pompc-tdmpc2\""
            )));
        }
        let spec = ModelSpec {
            obs_dim: get(m, "obs_dim")?,
            action_dim: get(m, "action_dim")?,
            latent_dim: get(m, "latent_dim")?,
            mlp_dim: get(m, "mlp_dim")?,
            enc_dim: get(m, "enc_dim")?,
            num_enc_layers: get(m, "num_enc_layers")?,
            num_q: get(m, "num_q")?,
            num_bins: get(m, "num_bins")?,
            vmin: get(m, "vmin")?,
            vmax: get(m, "vmax")?,
            simnorm_dim: get(m, "simnorm_dim")?,
            log_std_min: get(m, "log_std_min")?,
            log_std_max: get(m, "log_std_max")?,
            episodic: get(m, "episodic")?,
        };
        // Checked before any tensor list is built: the metadata alone must not size an
        // allocation.
        spec.validate().map_err(|e| match e {
            Error::InvalidArgument(m) => Error::Weights(format!("metadata: {m}")),
            e => e,
        })?;
        Ok(spec)
    }
}
