//! Records many dispatches and copies into one command encoder, submits once and maps one
//! staging buffer for everything read back.

use super::Gpu;
use super::buffer::GpuBuffer;
use super::pipeline::{Binding, Pipeline};
use crate::{Error, Result};
use bytemuck::Pod;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::Instant;

enum Op {
    Dispatch {
        pipe: Arc<Pipeline>,
        buffers: Vec<wgpu::Buffer>,
        params: Option<(u64, u64)>,
        groups: [u32; 3],
    },
    Copy {
        src: wgpu::Buffer,
        src_off: u64,
        dst: wgpu::Buffer,
        dst_off: u64,
        size: u64,
    },
    Clear {
        buf: wgpu::Buffer,
        size: u64,
    },
}

/// Where a read-back lands in the staging buffer; redeem it with [`Readback::get`].
#[derive(Debug)]
pub struct ReadbackHandle<T> {
    offset: u64,
    len: usize,
    _t: PhantomData<T>,
}

/// How long a submission took.
#[derive(Clone, Copy, Debug, Default)]
pub struct Timing {
    /// GPU time between the first and last recorded dispatch, from timestamp queries, when
    /// the device has them and the recorder asked for them.
    pub gpu_seconds: Option<f64>,
    /// Host wall clock from submit until the results were mapped (a fenced wall clock).
    pub wall_seconds: f64,
}

/// GPU time of one dispatch, from a recorder made [`Recorder::with_profile`].
#[derive(Clone, Debug)]
pub struct DispatchTime {
    /// The kernel: `shader::entry`.
    pub kernel: String,
    /// Workgroups dispatched along x, y and z.
    pub groups: [u32; 3],
    /// From the start to the end of its compute pass.
    pub seconds: f64,
}

/// The results of one [`Recorder::finish`]: all read-backs, mapped once.
#[derive(Debug)]
pub struct Readback {
    data: Vec<u8>,
    /// Timing of the submission.
    pub timing: Timing,
    /// Per-dispatch GPU times, in recorded order, when the recorder profiled.
    pub profile: Vec<DispatchTime>,
}

impl Readback {
    /// The elements read for `handle`.
    pub fn get<T: Pod>(&self, handle: &ReadbackHandle<T>) -> Result<Vec<T>> {
        let start = handle.offset as usize;
        let end = start + handle.len * std::mem::size_of::<T>();
        let bytes = self.data.get(start..end).ok_or_else(|| {
            Error::InvalidArgument("read-back handle from another recorder".into())
        })?;
        Ok(bytemuck::pod_collect_to_vec(bytes))
    }
}

/// A submitted [`Recorder`] whose read-backs have not been mapped yet.
pub struct PendingReadback<'g> {
    gpu: &'g Gpu,
    staging: Option<wgpu::Buffer>,
    staging_len: u64,
    mapped: Option<std::sync::mpsc::Receiver<std::result::Result<(), wgpu::BufferAsyncError>>>,
    ts_off: u64,
    timestamps: Option<(wgpu::QuerySet, wgpu::Buffer)>,
    profiled: Vec<(String, [u32; 3])>,
    t0: Instant,
    submission: wgpu::SubmissionIndex,
}

impl PendingReadback<'_> {
    /// Wait for this submission (and so for everything submitted before it) and return the
    /// read-backs. Work submitted after it may still be running: a caller can queue more GPU
    /// work before reading this result without waiting for it (the trainer submits its update
    /// behind the plan step, then reads the plan).
    pub fn wait(self) -> Result<Readback> {
        let gpu = self.gpu;
        gpu.scoped("reading back", || {
            let mut data = Vec::new();
            // The map callback runs once the submission has finished: a short step is seen
            // done by polling, without the driver's sleep and wake-up.
            let mut early = None;
            if let Some(rx) = &self.mapped {
                gpu.spin_until(|| {
                    early = early.take().or_else(|| rx.try_recv().ok());
                    early.is_some()
                });
            }
            if early.is_none() {
                gpu.wait_for(self.submission.clone())?;
            }
            if let (Some(staging), Some(rx)) = (&self.staging, &self.mapped) {
                // The wait above ran the map callback; the timeout only guards a driver that
                // reports a finished submission without it.
                let mapped = early
                    .map(Ok)
                    .unwrap_or_else(|| rx.recv_timeout(gpu.wait_timeout()))
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()));
                mapped.map_err(|message| Error::Map {
                    label: "pompc readback".into(),
                    message,
                })?;
                let view =
                    staging
                        .get_mapped_range(..self.staging_len)
                        .map_err(|e| Error::Map {
                            label: "pompc readback".into(),
                            message: e.to_string(),
                        })?;
                data.extend_from_slice(&view);
                drop(view);
                staging.unmap();
                gpu.count_readback();
            }
            // Finished and unmapped: the next submissions may reuse them.
            if let Some(staging) = self.staging {
                gpu.return_staging(staging);
            }
            let timestamps = self.timestamps.is_some();
            if let Some(ts) = self.timestamps {
                gpu.return_timestamps(ts);
            }
            let wall_seconds = self.t0.elapsed().as_secs_f64();
            let ts_off = self.ts_off;
            let gpu_seconds = timestamps.then(|| {
                let t: [u64; 2] = bytemuck::pod_read_unaligned(
                    &data[ts_off as usize..(ts_off + TIMESTAMP_BYTES) as usize],
                );
                t[1].saturating_sub(t[0]) as f64 * gpu.queue.get_timestamp_period() as f64 * 1e-9
            });
            let period = gpu.queue.get_timestamp_period() as f64 * 1e-9;
            let prof_off = (ts_off + if timestamps { TIMESTAMP_BYTES } else { 0 }) as usize;
            let profile = self
                .profiled
                .into_iter()
                .enumerate()
                .map(|(i, (kernel, groups))| {
                    let at = prof_off + i * TIMESTAMP_BYTES as usize;
                    let t: [u64; 2] =
                        bytemuck::pod_read_unaligned(&data[at..at + TIMESTAMP_BYTES as usize]);
                    DispatchTime {
                        kernel,
                        groups,
                        seconds: t[1].saturating_sub(t[0]) as f64 * period,
                    }
                })
                .collect();
            data.truncate(ts_off as usize);
            // With canaries on (tests), every read-back also checks that no kernel wrote past
            // the end of a buffer.
            gpu.check_canaries()?;
            Ok(Readback {
                data,
                timing: Timing {
                    gpu_seconds,
                    wall_seconds,
                },
                profile,
            })
        })
    }
}

/// Bind groups and a uniform buffer that recorders of the same work (a planner's steps, a
/// trainer's updates) share between submissions ([`Recorder::with_cache`]): a dispatch whose
/// pipeline, buffers and parameter slot the cache has seen gets its bind group back instead of
/// a new one. A bind group unused by the last few encodes is dropped, so a cache holds about
/// one step's worth. Clones share one cache; a cache serves one [`Gpu`].
///
/// ```no_run
/// # fn main() -> pompc::Result<()> {
/// # let gpu = pompc::Gpu::new(Default::default())?;
/// let cache = pompc::gpu::BindCache::new();
/// for _ in 0..100 {
///     let rec = pompc::Recorder::new(&gpu).with_cache(&cache);
///     // ... record the same dispatches on the same buffers each time ...
///     rec.submit()?;
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct BindCache(Arc<Mutex<CacheInner>>);

#[derive(Default)]
struct CacheInner {
    params: Option<wgpu::Buffer>,
    // By a hash of (layout, buffers, parameter slot); a hit allocates nothing.
    groups: HashMap<u64, Vec<Cached>>,
    generation: u64,
}

struct Cached {
    layout: wgpu::BindGroupLayout,
    buffers: Vec<wgpu::Buffer>,
    params: Option<(u64, u64)>,
    group: wgpu::BindGroup,
    used: u64,
}

// Encodes that a bind group survives unused: a trainer alternates a few different recordings.
const CACHE_KEEP: u64 = 4;

impl BindCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bind groups held.
    pub fn len(&self) -> usize {
        self.lock().groups.values().map(Vec::len).sum()
    }

    /// Whether the cache holds no bind group.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheInner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl CacheInner {
    fn params_buffer(
        &mut self,
        len: u64,
        create: impl FnOnce(u64) -> wgpu::Buffer,
    ) -> wgpu::Buffer {
        match &self.params {
            Some(b) if b.size() >= len => b.clone(),
            _ => {
                let b = create(len.next_power_of_two().max(256));
                self.params = Some(b.clone());
                // Their uniform bindings name the old buffer.
                self.groups.clear();
                b
            }
        }
    }

    fn get_or_make(
        &mut self,
        layout: &wgpu::BindGroupLayout,
        buffers: &[wgpu::Buffer],
        params: Option<(u64, u64)>,
        make: impl FnOnce() -> wgpu::BindGroup,
    ) -> wgpu::BindGroup {
        use std::hash::{Hash, Hasher};
        // DefaultHasher::new() has fixed keys: equal inputs hash alike across calls.
        let mut h = std::hash::DefaultHasher::new();
        layout.hash(&mut h);
        buffers.hash(&mut h);
        params.hash(&mut h);
        let generation = self.generation;
        let bucket = self.groups.entry(h.finish()).or_default();
        let hit = bucket
            .iter_mut()
            .find(|c| c.layout == *layout && c.buffers == buffers && c.params == params);
        if let Some(c) = hit {
            c.used = generation;
            return c.group.clone();
        }
        let group = make();
        bucket.push(Cached {
            layout: layout.clone(),
            buffers: buffers.to_vec(),
            params,
            group: group.clone(),
            used: generation,
        });
        group
    }

    fn end_encode(&mut self) {
        let generation = self.generation;
        self.groups.retain(|_, bucket| {
            bucket.retain(|c| c.used + CACHE_KEEP > generation);
            !bucket.is_empty()
        });
        self.generation += 1;
    }
}

/// A [`Recorder`]'s work encoded into one command buffer, not yet submitted
/// ([`Recorder::encode`]).
pub struct Encoded<'g> {
    gpu: &'g Gpu,
    cmd: wgpu::CommandBuffer,
    // The uniform block and the buffer it goes to, written just before the submit: a cached
    // uniform buffer is shared by every recorder of its cache.
    params: Option<(wgpu::Buffer, Vec<u8>)>,
    staging: Option<wgpu::Buffer>,
    staging_len: u64,
    ts_off: u64,
    // Pooled queries, given back once the submission has been waited for.
    timestamps: Option<(wgpu::QuerySet, wgpu::Buffer)>,
    profiled: Vec<(String, [u32; 3])>,
}

impl<'g> Encoded<'g> {
    /// Submit, and start mapping the read-backs; [`PendingReadback::wait`] collects them.
    /// Work submitted between [`Recorder::encode`] and this call runs before it.
    pub fn submit(self) -> Result<PendingReadback<'g>> {
        let gpu = self.gpu;
        gpu.scoped("submitting", || {
            let t0 = Instant::now();
            if let Some((buf, bytes)) = &self.params {
                gpu.queue.write_buffer(buf, 0, bytes);
            }
            let submission = gpu.queue.submit([self.cmd]);
            gpu.count_submit();
            let mapped = self.staging.as_ref().map(|staging| {
                let (tx, rx) = std::sync::mpsc::channel();
                staging
                    .slice(..self.staging_len)
                    .map_async(wgpu::MapMode::Read, move |r| {
                        let _ = tx.send(r);
                    });
                rx
            });
            Ok(PendingReadback {
                gpu,
                staging: self.staging,
                staging_len: self.staging_len,
                mapped,
                ts_off: self.ts_off,
                timestamps: self.timestamps,
                profiled: self.profiled,
                t0,
                submission,
            })
        })
    }
}

/// A batch of GPU work: dispatches and copies recorded in order, submitted once.
///
/// ```no_run
/// # fn main() -> pompc::Result<()> {
/// # let gpu = pompc::Gpu::new(Default::default())?;
/// let x = pompc::GpuBuffer::<f32>::new(&gpu, "x", 16)?;
/// let mut rec = pompc::Recorder::new(&gpu);
/// // ... kernels record dispatches into `rec` ...
/// let h = rec.read(&x);
/// let out = rec.finish()?;        // one submit, one map
/// let values = out.get(&h)?;
/// # Ok(()) }
/// ```
pub struct Recorder<'g> {
    gpu: &'g Gpu,
    ops: Vec<Op>,
    params: Vec<u8>,
    reads: Vec<(wgpu::Buffer, u64, u64)>,
    staging_size: u64,
    timestamps: bool,
    profile: bool,
    cache: Option<BindCache>,
}

const TIMESTAMP_BYTES: u64 = 16;
// Queries per query set (wgpu's limit is 4096): two per profiled dispatch.
const QUERIES_PER_SET: u32 = 4096;

impl<'g> Recorder<'g> {
    /// An empty recorder on `gpu`.
    pub fn new(gpu: &'g Gpu) -> Self {
        Recorder {
            gpu,
            ops: Vec::new(),
            params: Vec::new(),
            reads: Vec::new(),
            staging_size: 0,
            timestamps: false,
            profile: false,
            cache: None,
        }
    }

    /// Reuse bind groups and the uniform buffer from `cache`, which earlier recorders of the
    /// same work (a planner's steps, a trainer's updates) filled: encoding then creates no
    /// bind group for a dispatch whose pipeline, buffers and parameter slot it has seen.
    pub fn with_cache(mut self, cache: &BindCache) -> Self {
        self.cache = Some(cache.clone());
        self
    }

    /// Time the recorded dispatches with timestamp queries when the device has them (see
    /// [`Timing::gpu_seconds`]).
    pub fn with_timestamps(mut self) -> Self {
        self.timestamps = self.gpu.features().timestamps;
        self
    }

    /// Time every dispatch on its own (each in its own compute pass, between two timestamp
    /// writes) when the device has timestamp queries; [`Readback::profile`] gets the times.
    /// The passes cost some overlap between dispatches: use it to see where the time goes,
    /// and [`Recorder::with_timestamps`] for the total.
    pub fn with_profile(mut self) -> Self {
        self.profile = self.gpu.features().timestamps;
        self
    }

    /// The device this recorder records for.
    pub fn gpu(&self) -> &'g Gpu {
        self.gpu
    }

    /// Number of dispatches recorded so far.
    pub fn dispatches(&self) -> usize {
        self.ops
            .iter()
            .filter(|o| matches!(o, Op::Dispatch { .. }))
            .count()
    }

    /// Record one dispatch. `buffers` follow the pipeline's storage bindings in order; the
    /// uniform binding, if the kernel has one, gets `params`.
    pub fn dispatch<P: Pod>(
        &mut self,
        pipe: &Arc<Pipeline>,
        buffers: &[&wgpu::Buffer],
        params: Option<&P>,
        groups: [u32; 3],
    ) -> Result<()> {
        let storage = pipe
            .bindings
            .iter()
            .filter(|(_, b)| *b != Binding::Uniform)
            .count();
        let uniform = pipe.bindings.iter().any(|(_, b)| *b == Binding::Uniform);
        if storage != buffers.len() || uniform != params.is_some() {
            return Err(Error::InvalidArgument(format!(
                "{}: {} buffers and {} params given, kernel has {storage} storage bindings and {} \
                 uniform",
                pipe.label,
                buffers.len(),
                params.is_some() as u8,
                uniform as u8
            )));
        }
        let max = self.gpu.limits().max_compute_workgroups_per_dimension;
        if groups.iter().any(|&g| g > max) {
            return Err(Error::Limit(format!(
                "{}: dispatch of {groups:?} workgroups exceeds {max} per dimension",
                pipe.label
            )));
        }
        let params = params.map(|p| {
            let align = self.gpu.limits().min_uniform_buffer_offset_alignment as usize;
            let off = self.params.len().div_ceil(align) * align;
            let bytes = bytemuck::bytes_of(p);
            self.params.resize(off, 0);
            self.params.extend_from_slice(bytes);
            // Uniform bindings must be multiples of 16 bytes.
            let size = bytes.len().div_ceil(16) * 16;
            self.params.resize(off + size, 0);
            (off as u64, size as u64)
        });
        if groups.contains(&0) {
            return Ok(());
        }
        self.ops.push(Op::Dispatch {
            pipe: pipe.clone(),
            buffers: buffers.iter().map(|b| (*b).clone()).collect(),
            params,
            groups,
        });
        Ok(())
    }

    /// Record a copy of all of `src` into `dst` (same length).
    pub fn copy<T: Pod>(&mut self, src: &GpuBuffer<T>, dst: &GpuBuffer<T>) -> Result<()> {
        if src.len() != dst.len() {
            return Err(Error::Shape(format!(
                "copy from {:?} ({}) to {:?} ({})",
                src.label(),
                src.len(),
                dst.label(),
                dst.len()
            )));
        }
        let size = super::buffer::padded_bytes::<T>(src.len());
        self.ops.push(Op::Copy {
            src: src.buffer.clone(),
            src_off: 0,
            dst: dst.buffer.clone(),
            dst_off: 0,
            size,
        });
        Ok(())
    }

    /// Record a copy of `len` elements between `alone[..len]` and a population's share
    /// `pop[at..at + len]`: into the population (`into_population`) or back out of it.
    pub fn copy_share<T: Pod>(
        &mut self,
        pop: &GpuBuffer<T>,
        at: usize,
        alone: &GpuBuffer<T>,
        len: usize,
        into_population: bool,
    ) -> Result<()> {
        if into_population {
            self.copy_range(alone, 0, pop, at, len)
        } else {
            self.copy_range(pop, at, alone, 0, len)
        }
    }

    /// Record a copy of `len` elements from `src[src_at..]` to `dst[dst_at..]` (offsets and
    /// lengths in elements; byte ranges must be multiples of 4).
    pub fn copy_range<T: Pod>(
        &mut self,
        src: &GpuBuffer<T>,
        src_at: usize,
        dst: &GpuBuffer<T>,
        dst_at: usize,
        len: usize,
    ) -> Result<()> {
        let e = std::mem::size_of::<T>();
        let past = |at: usize, n: usize| at.checked_add(len).is_none_or(|end| end > n);
        if past(src_at, src.len()) || past(dst_at, dst.len()) {
            return Err(Error::Shape(format!(
                "copy of {len} elements from {:?}[{src_at}..] ({}) to {:?}[{dst_at}..] ({})",
                src.label(),
                src.len(),
                dst.label(),
                dst.len()
            )));
        }
        if ![src_at, dst_at, len]
            .iter()
            .all(|v| (v * e).is_multiple_of(4))
        {
            return Err(Error::InvalidArgument(
                "buffer copies move whole 4-byte words".into(),
            ));
        }
        if len == 0 {
            return Ok(());
        }
        self.ops.push(Op::Copy {
            src: src.buffer.clone(),
            src_off: (src_at * e) as u64,
            dst: dst.buffer.clone(),
            dst_off: (dst_at * e) as u64,
            size: (len * e) as u64,
        });
        Ok(())
    }

    /// Record zeroing all of `buf` (a gradient buffer before a backward pass).
    pub fn clear<T: Pod>(&mut self, buf: &GpuBuffer<T>) {
        // Its elements' whole words, not a canary guard after them.
        let size = ((buf.len() * std::mem::size_of::<T>()) as u64).div_ceil(4) * 4;
        if size == 0 {
            return;
        }
        self.ops.push(Op::Clear {
            buf: buf.buffer.clone(),
            size,
        });
    }

    /// Read `buf` back after everything recorded so far.
    pub fn read<T: Pod>(&mut self, buf: &GpuBuffer<T>) -> ReadbackHandle<T> {
        let size = super::buffer::padded_bytes::<T>(buf.len());
        let offset = self.staging_size;
        self.staging_size += size;
        self.reads.push((buf.buffer.clone(), size, offset));
        ReadbackHandle {
            offset,
            len: buf.len(),
            _t: PhantomData,
        }
    }

    /// Submit; wait only when something is read back (or timed).
    pub fn submit(self) -> Result<()> {
        let pending = self.encode()?.submit()?;
        if pending.staging.is_some() {
            pending.wait()?;
        }
        Ok(())
    }

    /// Encode everything, submit once, map the read-backs and wait for them.
    pub fn finish(self) -> Result<Readback> {
        self.submit_for_read()?.wait()
    }

    /// Encode everything and submit once, without waiting: the host can prepare the next
    /// batch of work while the GPU runs this one. [`PendingReadback::wait`] maps the
    /// read-backs (it waits for this submission and those before it, not for later ones).
    pub fn submit_for_read(self) -> Result<PendingReadback<'g>> {
        self.encode()?.submit()
    }

    /// Encode everything into one command buffer without submitting it, so that the host's
    /// encoding can overlap GPU work submitted before (the trainer encodes its update while
    /// the plan step runs). [`Encoded::submit`] submits it.
    pub fn encode(mut self) -> Result<Encoded<'g>> {
        let gpu = self.gpu;
        gpu.scoped("encoding", || {
            let ts_off = self.staging_size;
            let profiled: Vec<(String, [u32; 3])> = if self.profile {
                self.ops
                    .iter()
                    .filter_map(|o| match o {
                        Op::Dispatch { pipe, groups, .. } => Some((pipe.label.clone(), *groups)),
                        _ => None,
                    })
                    .collect()
            } else {
                Vec::new()
            };
            // A profile times each dispatch instead of the whole.
            let total = self.timestamps && !self.profile;
            let staging_size = ts_off
                + if total { TIMESTAMP_BYTES } else { 0 }
                + profiled.len() as u64 * TIMESTAMP_BYTES;
            // Mapped ranges start and end on 8-byte boundaries.
            let staging_len = staging_size.next_multiple_of(8);
            let staging = (staging_size > 0).then(|| gpu.take_staging(staging_len));
            let ts = total.then(|| gpu.take_timestamps(TIMESTAMP_BYTES));
            let prof = self.profile_sets(profiled.len());
            let params_buf = self.params_buffer();
            let cmd =
                self.encode_commands(staging.as_ref(), ts.as_ref(), &prof, params_buf.as_ref())?;
            let params = params_buf.map(|b| (b, std::mem::take(&mut self.params)));
            Ok(Encoded {
                gpu,
                cmd,
                params,
                staging,
                staging_len,
                ts_off,
                timestamps: ts,
                profiled,
            })
        })
    }

    // The uniform buffer for this recorder's parameter block: the cache's (grown when too
    // small) or a fresh one.
    fn params_buffer(&self) -> Option<wgpu::Buffer> {
        if self.params.is_empty() {
            return None;
        }
        let len = self.params.len() as u64;
        let create = |size: u64| {
            self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("pompc params"),
                size,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        };
        Some(match &self.cache {
            Some(c) => c.lock().params_buffer(len, create),
            None => create(len),
        })
    }

    // Query sets and resolve buffers for `dispatches` profiled dispatches.
    fn profile_sets(&self, dispatches: usize) -> Vec<(wgpu::QuerySet, wgpu::Buffer, u32)> {
        let queries = 2 * dispatches as u32;
        (0..queries.div_ceil(QUERIES_PER_SET))
            .map(|i| {
                let count = (queries - i * QUERIES_PER_SET).min(QUERIES_PER_SET);
                let set = self.gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("pompc profile"),
                    ty: wgpu::QueryType::Timestamp,
                    count,
                });
                let resolve = self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("pompc profile resolve"),
                    size: count as u64 * 8,
                    usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                });
                (set, resolve, count)
            })
            .collect()
    }

    fn encode_commands(
        &self,
        staging: Option<&wgpu::Buffer>,
        ts: Option<&(wgpu::QuerySet, wgpu::Buffer)>,
        prof: &[(wgpu::QuerySet, wgpu::Buffer, u32)],
        params_buf: Option<&wgpu::Buffer>,
    ) -> Result<wgpu::CommandBuffer> {
        let gpu = self.gpu;
        let mut cache = self.cache.as_ref().map(|c| c.lock());
        let mut enc = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("pompc"),
            });
        // Consecutive dispatches share one compute pass; copies sit between passes.
        let n_passes = {
            let mut n = 0;
            let mut in_pass = false;
            for op in &self.ops {
                match op {
                    Op::Dispatch { .. } if !in_pass => {
                        n += 1;
                        in_pass = true;
                    }
                    Op::Copy { .. } | Op::Clear { .. } => in_pass = false,
                    _ => {}
                }
            }
            n
        };
        let mut pass_index = 0;
        let mut dispatch_index = 0u32;
        let mut i = 0;
        while i < self.ops.len() {
            match &self.ops[i] {
                Op::Copy {
                    src,
                    src_off,
                    dst,
                    dst_off,
                    size,
                } => {
                    enc.copy_buffer_to_buffer(src, *src_off, dst, *dst_off, *size);
                    i += 1;
                }
                Op::Clear { buf, size } => {
                    enc.clear_buffer(buf, 0, Some(*size));
                    i += 1;
                }
                Op::Dispatch { .. } => {
                    // Only the first pass starts the clock and only the last stops it; passes
                    // between (split by copies or clears) carry no timestamp writes at all.
                    let (first, last) = (pass_index == 0, pass_index + 1 == n_passes);
                    let timestamp_writes = if prof.is_empty() {
                        ts.filter(|_| first || last).map(|(set, _)| {
                            wgpu::ComputePassTimestampWrites {
                                query_set: set,
                                beginning_of_pass_write_index: first.then_some(0),
                                end_of_pass_write_index: last.then_some(1),
                            }
                        })
                    } else {
                        // Profiling: one pass per dispatch, timed on its own (the total, if
                        // asked for too, is not measured in this mode).
                        let q = 2 * dispatch_index;
                        let (set, _, _) = &prof[(q / QUERIES_PER_SET) as usize];
                        Some(wgpu::ComputePassTimestampWrites {
                            query_set: set,
                            beginning_of_pass_write_index: Some(q % QUERIES_PER_SET),
                            end_of_pass_write_index: Some(q % QUERIES_PER_SET + 1),
                        })
                    };
                    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some("pompc"),
                        timestamp_writes,
                    });
                    while let Some(Op::Dispatch {
                        pipe,
                        buffers,
                        params,
                        groups,
                    }) = self.ops.get(i)
                    {
                        let make = || {
                            let mut it = buffers.iter();
                            let entries: Vec<wgpu::BindGroupEntry> = pipe
                                .bindings
                                .iter()
                                .map(|&(b, kind)| wgpu::BindGroupEntry {
                                    binding: b,
                                    resource: match (kind, params, params_buf) {
                                        (Binding::Uniform, Some((off, size)), Some(pb)) => {
                                            wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                                buffer: pb,
                                                offset: *off,
                                                size: wgpu::BufferSize::new(*size),
                                            })
                                        }
                                        _ => it
                                            .next()
                                            .expect("buffer count checked in dispatch")
                                            .as_entire_binding(),
                                    },
                                })
                                .collect();
                            gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
                                label: Some(&pipe.label),
                                layout: &pipe.layout,
                                entries: &entries,
                            })
                        };
                        let bg = match cache.as_mut() {
                            Some(c) => c.get_or_make(&pipe.layout, buffers, *params, make),
                            None => make(),
                        };
                        pass.set_pipeline(&pipe.pipeline);
                        pass.set_bind_group(0, &bg, &[]);
                        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
                        i += 1;
                        dispatch_index += 1;
                        if !prof.is_empty() {
                            break;
                        }
                    }
                    pass_index += 1;
                }
            }
        }
        if let Some(c) = cache.as_mut() {
            c.end_encode();
        }
        if let Some(staging) = staging {
            for (src, size, off) in &self.reads {
                enc.copy_buffer_to_buffer(src, 0, staging, *off, *size);
            }
            if let Some((set, resolve)) = ts {
                enc.resolve_query_set(set, 0..2, resolve, 0);
                enc.copy_buffer_to_buffer(resolve, 0, staging, self.staging_size, TIMESTAMP_BYTES);
            }
            let mut off = self.staging_size + if ts.is_some() { TIMESTAMP_BYTES } else { 0 };
            for (set, resolve, count) in prof {
                enc.resolve_query_set(set, 0..*count, resolve, 0);
                enc.copy_buffer_to_buffer(resolve, 0, staging, off, *count as u64 * 8);
                off += *count as u64 * 8;
            }
        }
        Ok(enc.finish())
    }
}
