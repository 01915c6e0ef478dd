//! Every parameter of a world model in one flat buffer, in the order of
//! [`ModelSpec::tensors`], so that clipping, Adam and the Polyak update are one dispatch each
//! over ranges of it, and the gradient buffer shares its layout.

use crate::model::{ModelSpec, Net, Weights};
use crate::{Error, Result};
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

/// Where each tensor of a model sits in the flat parameter buffer.
#[derive(Clone, Debug)]
pub struct ParamLayout {
    /// The model.
    pub spec: ModelSpec,
    tensors: Vec<(String, Vec<usize>, usize)>,
    by_name: BTreeMap<String, usize>,
    nets: HashMap<Net, Range<usize>>,
    len: usize,
}

impl ParamLayout {
    /// The layout of `spec`'s tensors, back to back.
    pub fn new(spec: &ModelSpec) -> ParamLayout {
        let mut tensors = Vec::new();
        let mut by_name = BTreeMap::new();
        let mut nets = HashMap::new();
        let mut off = 0;
        for net in Net::ALL {
            let start = off;
            for ls in spec.layers(net) {
                let e = spec.members(net);
                let stack = |mut s: Vec<usize>| {
                    if net == Net::Q {
                        s.insert(0, e);
                    }
                    s
                };
                let k = ls.in1 + ls.in2;
                let mut add = |name: String, shape: Vec<usize>| {
                    by_name.insert(name.clone(), tensors.len());
                    let n: usize = shape.iter().product();
                    tensors.push((name, shape, off));
                    off += n;
                };
                add(format!("{}.weight", ls.prefix), stack(vec![ls.out, k]));
                add(format!("{}.bias", ls.prefix), stack(vec![ls.out]));
                if ls.normed {
                    add(format!("{}.ln.weight", ls.prefix), stack(vec![ls.out]));
                    add(format!("{}.ln.bias", ls.prefix), stack(vec![ls.out]));
                }
            }
            nets.insert(net, start..off);
        }
        ParamLayout {
            spec: spec.clone(),
            tensors,
            by_name,
            nets,
            len: off,
        }
    }

    /// Total elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the model has no parameters (never, for a valid spec).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Element offset of a tensor by TD-MPC2 name.
    pub fn offset(&self, name: &str) -> Result<usize> {
        self.by_name
            .get(name)
            .map(|&i| self.tensors[i].2)
            .ok_or_else(|| Error::InvalidArgument(format!("no parameter tensor {name:?}")))
    }

    /// The elements of one network's parameters.
    pub fn net(&self, net: Net) -> Range<usize> {
        self.nets.get(&net).cloned().unwrap_or(0..0)
    }

    /// Every tensor: name, shape and offset.
    pub fn tensors(&self) -> impl Iterator<Item = (&str, &[usize], usize)> {
        self.tensors
            .iter()
            .map(|(n, s, o)| (n.as_str(), s.as_slice(), *o))
    }

    /// The flat vector of `weights` (which must be of this layout's spec).
    pub fn flatten(&self, weights: &Weights) -> Result<Vec<f32>> {
        if weights.spec != self.spec {
            return Err(Error::InvalidArgument(
                "weights of another model than the parameter layout's".into(),
            ));
        }
        let mut flat = vec![0.0f32; self.len];
        for (name, shape, off) in &self.tensors {
            let t = weights.tensors.get(name).ok_or_else(|| {
                Error::InvalidArgument(format!("weights lack the tensor {name:?}"))
            })?;
            if &t.shape != shape {
                return Err(Error::Shape(format!(
                    "{name}: shape {:?}, the model needs {shape:?}",
                    t.shape
                )));
            }
            flat[*off..*off + t.data.len()].copy_from_slice(&t.data);
        }
        Ok(flat)
    }

    /// Write a flat vector back into `weights` (for a checkpoint or a planner).
    pub fn unflatten(&self, flat: &[f32], weights: &mut Weights) -> Result<()> {
        if flat.len() != self.len {
            return Err(Error::Shape(format!(
                "flat parameters of {} elements, the layout holds {}",
                flat.len(),
                self.len
            )));
        }
        for (name, shape, off) in &self.tensors {
            let t = weights.tensors.get_mut(name).ok_or_else(|| {
                Error::InvalidArgument(format!("weights lack the tensor {name:?}"))
            })?;
            let n: usize = shape.iter().product();
            t.shape = shape.clone();
            t.data.clear();
            t.data.extend_from_slice(&flat[*off..*off + n]);
        }
        Ok(())
    }
}
