//! The GPU context: adapter and device, limits and features, the pipeline cache, buffer
//! creation, dispatch recording and readback. Direct wgpu calls stay here and in `ops`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::shaders::Shader;

/// How to open the device.
#[derive(Clone, Debug, Default)]
pub struct ContextOptions {
    /// Pretend the device allows at most this many bytes per storage binding (for testing the
    /// large-tensor path on small models); `None` uses the adapter's own limit.
    pub max_binding_size: Option<u64>,
    /// The kernel shapes to use; `None` chooses by the adapter's device type.
    pub kernel_shape: Option<KernelShape>,
    /// `Some(false)`: leave the adapter's subgroup operations unused (to test or measure the
    /// kernels' other path); `None` uses them where the adapter has them.
    pub subgroups: Option<bool>,
}

/// Which kernel shapes suit a device. GPUs run cooperative workgroups and pay for every
/// dispatch, so steps are fused into the products around them. CPU-backed adapters (lavapipe,
/// SwiftShader) run a workgroup as SIMD lanes: barriers and work repeated per lane cost more
/// there than a dispatch does, so each invocation works alone and a step that would be
/// recomputed in every lane stays a dispatch of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelShape {
    Gpu,
    Cpu,
}

/// Identity of a compiled pipeline: shader, entry point and the override constants that
/// specialise it. Its `Display` form is the wgpu label, so validation errors name the kernel.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PipelineKey {
    pub shader: &'static str,
    pub entry: &'static str,
    /// (name, value bits) sorted by name; f64 bits so that the key is hashable.
    pub constants: Vec<(&'static str, u64)>,
    /// (name, value): module-scope `const` values set in the source before compiling, for what
    /// override constants cannot set (array lengths outside workgroup memory).
    pub defines: Vec<(&'static str, u32)>,
}

impl std::fmt::Display for PipelineKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}::{}", self.shader, self.entry)?;
        for (name, bits) in &self.constants {
            write!(f, " {}={}", name, f64::from_bits(*bits))?;
        }
        for (word, value) in &self.defines {
            write!(f, " {word}:={value}")?;
        }
        Ok(())
    }
}

/// One recorded compute dispatch: everything needed to replay it in a later step.
#[derive(Clone)]
pub struct Dispatch {
    pub pipeline: Arc<wgpu::ComputePipeline>,
    pub bind_group: wgpu::BindGroup,
    pub workgroups: [u32; 3],
    /// `shader::entry` of the pipeline, for profiles.
    pub kernel: Arc<str>,
}

/// Usage of the buffers kernels read and write: storage, copies, and uniform, so that a kernel
/// may read a small input through a uniform binding (see shaders/matvec_cpu.wgsl).
const STORAGE_USAGE: wgpu::BufferUsages =
    wgpu::BufferUsages::STORAGE.union(wgpu::BufferUsages::UNIFORM).union(wgpu::BufferUsages::COPY_SRC).union(wgpu::BufferUsages::COPY_DST);

/// Device, queue and caches shared by everything that runs on one GPU.
pub struct Context {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub features: wgpu::Features,
    /// The kernel shapes this context uses.
    pub kernel_shape: KernelShape,
    /// Whether kernels use subgroup operations: where the adapter has them, natively (browsers
    /// do not all know the `subgroup_id` built-in yet), and unless the options say not to.
    pub subgroups: bool,
    binding_limit: u64,
    pipelines: Mutex<HashMap<PipelineKey, Arc<wgpu::ComputePipeline>>>,
    last_error: Arc<Mutex<Option<String>>>,
    /// Why the device was lost, once it has been.
    lost: Arc<Mutex<Option<String>>>,
}

impl Context {
    /// Opens the first adapter that `WGPU_BACKEND` / `WGPU_ADAPTER_NAME` allow (high performance
    /// preferred), requesting its own limits and the optional features it has.
    pub async fn new(options: ContextOptions) -> Result<Self> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = match std::env::var("WGPU_ADAPTER_NAME") {
            Ok(name) if !cfg!(target_arch = "wasm32") => {
                let name = name.to_lowercase();
                instance
                    .enumerate_adapters(wgpu::Backends::all())
                    .await
                    .into_iter()
                    .find(|a| a.get_info().name.to_lowercase().contains(&name))
                    .ok_or_else(|| Error::NoAdapter(format!("no adapter name contains {name:?}")))?
            }
            _ => instance
                .request_adapter(&wgpu::RequestAdapterOptions {
                    power_preference: wgpu::PowerPreference::HighPerformance,
                    ..Default::default()
                })
                .await
                .map_err(|e| Error::NoAdapter(e.to_string()))?,
        };
        let info = adapter.get_info();
        let wanted = wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP | wgpu::Features::TIMESTAMP_QUERY;
        let features = adapter.features() & wanted;
        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("adore"),
                required_features: features,
                required_limits: limits.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| Error::Device(e.to_string()))?;
        let last_error: Arc<Mutex<Option<String>>> = Arc::default();
        let sink = last_error.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut slot) = sink.lock() {
                slot.get_or_insert_with(|| e.to_string());
            }
        }));
        let lost: Arc<Mutex<Option<String>>> = Arc::default();
        let flag = lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            if let Ok(mut slot) = flag.lock() {
                slot.get_or_insert_with(|| if message.is_empty() { format!("{reason:?}") } else { format!("{reason:?}: {message}") });
            }
        });
        let device_limit = (limits.max_storage_buffer_binding_size as u64).min(limits.max_buffer_size);
        let binding_limit = options.max_binding_size.map_or(device_limit, |m| m.min(device_limit));
        let by_type = if info.device_type == wgpu::DeviceType::Cpu { KernelShape::Cpu } else { KernelShape::Gpu };
        let kernel_shape = options.kernel_shape.unwrap_or(by_type);
        let subgroups = features.contains(wgpu::Features::SUBGROUP) && options.subgroups != Some(false) && !cfg!(target_arch = "wasm32");
        Ok(Self {
            device,
            queue,
            info,
            limits,
            features,
            kernel_shape,
            subgroups,
            binding_limit,
            pipelines: Mutex::default(),
            last_error,
            lost,
        })
    }

    /// Blocking form of [`Context::new`] for native programs.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new_blocking(options: ContextOptions) -> Result<Self> {
        pollster::block_on(Self::new(options))
    }

    /// One line naming the adapter, for logs and benchmark reports.
    pub fn describe(&self) -> String {
        // Browsers may withhold the adapter's name and driver.
        let name = if self.info.name.is_empty() { "unnamed adapter" } else { &self.info.name };
        let driver = if self.info.driver_info.is_empty() { String::new() } else { format!(", driver {}", self.info.driver_info) };
        format!("{name} ({:?}, {:?}{driver})", self.info.backend, self.info.device_type)
    }

    /// Whether decode steps use subgroup operations, for logs: "used", "unused", or "unused by
    /// the CPU kernel shape" (which has no subgroup path).
    pub fn subgroup_use(&self) -> &'static str {
        match (self.subgroups, self.kernel_shape) {
            (true, KernelShape::Gpu) => "used",
            (true, KernelShape::Cpu) => "unused by the CPU kernel shape",
            (false, _) => "unused",
        }
    }

    /// Largest storage binding this context allows, in bytes.
    pub fn binding_limit(&self) -> u64 {
        self.binding_limit
    }

    /// Checks that a buffer of `bytes` fits in one binding; names `what` otherwise.
    pub fn check_binding(&self, what: &str, bytes: u64) -> Result<()> {
        if bytes > self.binding_limit {
            return Err(Error::TensorTooLarge { tensor: what.to_string(), bytes, limit: self.binding_limit });
        }
        Ok(())
    }

    /// The compiled pipeline for (shader, entry, constants), compiled once and cached.
    pub fn pipeline(&self, shader: &Shader, entry: &'static str, constants: &[(&'static str, f64)]) -> Result<Arc<wgpu::ComputePipeline>> {
        self.pipeline_with(shader, entry, constants, &[])
    }

    /// [`Context::pipeline`] with `defines`: module-scope `u32` constants of the source set to
    /// other values.
    pub fn pipeline_with(
        &self,
        shader: &Shader,
        entry: &'static str,
        constants: &[(&'static str, f64)],
        defines: &[(&'static str, u32)],
    ) -> Result<Arc<wgpu::ComputePipeline>> {
        let mut sorted: Vec<(&'static str, u64)> = constants.iter().map(|(n, v)| (*n, v.to_bits())).collect();
        sorted.sort();
        let key = PipelineKey { shader: shader.name, entry, constants: sorted, defines: defines.to_vec() };
        let mut cache = self.pipelines.lock().map_err(|_| Error::Gpu("pipeline cache poisoned".into()))?;
        if let Some(p) = cache.get(&key) {
            return Ok(p.clone());
        }
        let label = key.to_string();
        let source = shader.source_with(defines)?;
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor { label: Some(&label), source: wgpu::ShaderSource::Wgsl(source.into()) });
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&label),
            layout: None,
            module: &module,
            entry_point: Some(entry),
            compilation_options: wgpu::PipelineCompilationOptions { constants, zero_initialize_workgroup_memory: false },
            cache: None,
        });
        let popped = scope.pop();
        // Native: the scope's result is ready at once. Web: it arrives from the browser later,
        // and cannot be waited for here; it is reported by the next `take_error`.
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(err) = pollster::block_on(popped) {
            return Err(Error::Gpu(format!("compiling {label}: {err}")));
        }
        #[cfg(target_arch = "wasm32")]
        {
            let sink = self.last_error.clone();
            let label = label.clone();
            wasm_bindgen_futures::spawn_local(async move {
                if let (Some(err), Ok(mut slot)) = (popped.await, sink.lock()) {
                    slot.get_or_insert_with(|| format!("compiling {label}: {err}"));
                }
            });
        }
        let pipeline = Arc::new(pipeline);
        cache.insert(key, pipeline.clone());
        Ok(pipeline)
    }

    /// Number of distinct pipelines compiled so far.
    pub fn pipeline_count(&self) -> usize {
        self.pipelines.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// A storage buffer of `bytes` (at least 4), zero-filled.
    pub fn storage(&self, label: &str, bytes: u64) -> Result<wgpu::Buffer> {
        self.check_binding(label, bytes)?;
        self.check_alive()?;
        Ok(self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.max(4).next_multiple_of(4),
            usage: STORAGE_USAGE,
            mapped_at_creation: false,
        }))
    }

    /// A storage buffer holding `data` (padded to a multiple of 4 bytes).
    pub fn storage_init(&self, label: &str, data: &[u8]) -> Result<wgpu::Buffer> {
        self.check_binding(label, data.len() as u64)?;
        let mut padded;
        let contents = if !data.len().is_multiple_of(4) || data.is_empty() {
            padded = data.to_vec();
            padded.resize(data.len().next_multiple_of(4).max(4), 0);
            &padded[..]
        } else {
            data
        };
        self.check_alive()?;
        // Written while mapped at creation, as wgpu's create_buffer_init does, but a buffer the
        // device could not make (out of memory, device lost) is an error here, not a panic.
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: contents.len() as u64,
            usage: STORAGE_USAGE,
            mapped_at_creation: true,
        });
        {
            let mut view = buffer.slice(..).get_mapped_range_mut().map_err(|e| self.gpu_error(format!("creating {label}: {e}")))?;
            view.copy_from_slice(contents);
        }
        buffer.unmap();
        Ok(buffer)
    }

    /// A uniform buffer holding a params struct (written through the queue: creating it cannot
    /// fail here; a device that could not make it reports at the next submit).
    pub fn uniform<T: bytemuck::Pod>(&self, label: &str, value: &T) -> wgpu::Buffer {
        let bytes = bytemuck::bytes_of(value);
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: (bytes.len() as u64).max(4).next_multiple_of(4),
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.queue.write_buffer(&buffer, 0, bytes);
        buffer
    }

    /// Err(DeviceLost) once the device is gone: everything made from it is unusable, and the
    /// model must be loaded again on a new context.
    pub fn check_alive(&self) -> Result<()> {
        match self.lost.lock().ok().and_then(|l| l.clone()) {
            Some(why) => Err(Error::DeviceLost(why)),
            None => Ok(()),
        }
    }

    /// A GPU failure, reported as a lost device when that is what it was.
    fn gpu_error(&self, what: String) -> Error {
        self.check_alive().err().unwrap_or(Error::Gpu(what))
    }

    /// Binds `buffers` to bindings 0.. of group 0 of `pipeline`, in order.
    pub fn dispatch(&self, pipeline: Arc<wgpu::ComputePipeline>, buffers: &[&wgpu::Buffer], workgroups: [u32; 3]) -> Dispatch {
        let whole: Vec<(&wgpu::Buffer, Option<(u64, u64)>)> = buffers.iter().map(|b| (*b, None)).collect();
        self.dispatch_sized(pipeline, &whole, workgroups)
    }

    /// [`Context::dispatch`] where a buffer may be bound as a range (offset, size) rather than
    /// whole: uniform bindings are limited in size.
    pub fn dispatch_sized(
        &self,
        pipeline: Arc<wgpu::ComputePipeline>,
        buffers: &[(&wgpu::Buffer, Option<(u64, u64)>)],
        workgroups: [u32; 3],
    ) -> Dispatch {
        let layout = pipeline.get_bind_group_layout(0);
        let entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .enumerate()
            .map(|(i, (buffer, range))| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer,
                    offset: range.map_or(0, |r| r.0),
                    size: range.and_then(|r| wgpu::BufferSize::new(r.1)),
                }),
            })
            .collect();
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout: &layout, entries: &entries });
        // The kernel's name from the pipeline cache's key (plans are built once, so the scan is rare).
        let kernel = self.pipelines.lock().ok().and_then(|c| {
            c.iter().find(|(_, p)| Arc::ptr_eq(p, &pipeline)).map(|(k, _)| Arc::<str>::from(format!("{}::{}", k.shader, k.entry)))
        });
        Dispatch { pipeline, bind_group, workgroups, kernel: kernel.unwrap_or_else(|| "unnamed".into()) }
    }

    /// Records `dispatches` into one compute pass of `encoder`, in order.
    pub fn record(&self, encoder: &mut wgpu::CommandEncoder, dispatches: &[Dispatch]) {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: None });
        for d in dispatches {
            pass.set_pipeline(&d.pipeline);
            pass.set_bind_group(0, &d.bind_group, &[]);
            pass.dispatch_workgroups(d.workgroups[0], d.workgroups[1], d.workgroups[2]);
        }
    }

    pub fn encoder(&self) -> wgpu::CommandEncoder {
        self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None })
    }

    /// Submits `dispatches` as one command buffer.
    pub fn run(&self, dispatches: &[Dispatch]) -> Result<()> {
        let mut encoder = self.encoder();
        self.record(&mut encoder, dispatches);
        self.queue.submit([encoder.finish()]);
        self.take_error()
    }

    /// Returns the first uncaptured GPU error since the last call, if any.
    pub fn take_error(&self) -> Result<()> {
        self.check_alive()?;
        match self.last_error.lock().ok().and_then(|mut e| e.take()) {
            Some(msg) => Err(Error::Gpu(msg)),
            None => Ok(()),
        }
    }

    /// A buffer the CPU can map to read results back.
    pub fn staging(&self, bytes: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("staging"),
            size: bytes.max(4).next_multiple_of(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// Maps `staging` (already filled by a submitted copy) and returns its first `bytes` bytes.
    pub async fn map_read(&self, staging: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
        let slice = staging.slice(..bytes.max(4).next_multiple_of(4));
        let (tx, rx) = futures_channel();
        slice.map_async(wgpu::MapMode::Read, move |r| tx.send(r));
        #[cfg(not(target_arch = "wasm32"))]
        self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| self.gpu_error(e.to_string()))?;
        rx.recv().await.map_err(|e| self.gpu_error(format!("reading back from the GPU: {e}")))?;
        let out = {
            let view = slice.get_mapped_range().map_err(|e| self.gpu_error(e.to_string()))?;
            view[..bytes as usize].to_vec()
        };
        staging.unmap();
        self.take_error()?;
        Ok(out)
    }

    /// Copies `bytes` bytes of `buffer` from `offset` back to the CPU.
    pub async fn read(&self, buffer: &wgpu::Buffer, offset: u64, bytes: u64) -> Result<Vec<u8>> {
        let staging = self.staging(bytes);
        let mut encoder = self.encoder();
        encoder.copy_buffer_to_buffer(buffer, offset, &staging, 0, bytes.next_multiple_of(4));
        self.queue.submit([encoder.finish()]);
        self.map_read(&staging, bytes).await
    }

    /// Reads a whole buffer as f32 values.
    pub async fn read_f32(&self, buffer: &wgpu::Buffer, count: usize) -> Result<Vec<f32>> {
        let bytes = self.read(buffer, 0, (count * 4) as u64).await?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Reads a whole buffer as u32 values.
    pub async fn read_u32(&self, buffer: &wgpu::Buffer, count: usize) -> Result<Vec<u32>> {
        let bytes = self.read(buffer, 0, (count * 4) as u64).await?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }
}

/// A one-shot channel that works on both native and wasm without extra dependencies.
fn futures_channel<T: Send + 'static>() -> (OneshotTx<T>, OneshotRx<T>) {
    let shared = Arc::new(Mutex::new(OneshotState { value: None, waker: None }));
    (OneshotTx(shared.clone()), OneshotRx(shared))
}

struct OneshotState<T> {
    value: Option<T>,
    waker: Option<std::task::Waker>,
}
struct OneshotTx<T>(Arc<Mutex<OneshotState<T>>>);
struct OneshotRx<T>(Arc<Mutex<OneshotState<T>>>);

impl<T> OneshotTx<T> {
    fn send(self, v: T) {
        if let Ok(mut s) = self.0.lock() {
            s.value = Some(v);
            if let Some(w) = s.waker.take() {
                w.wake();
            }
        }
    }
}

impl<T> OneshotRx<T> {
    fn recv(self) -> impl std::future::Future<Output = T> {
        std::future::poll_fn(move |cx| {
            let mut s = match self.0.lock() {
                Ok(s) => s,
                Err(p) => p.into_inner(),
            };
            match s.value.take() {
                Some(v) => std::task::Poll::Ready(v),
                None => {
                    s.waker = Some(cx.waker().clone());
                    std::task::Poll::Pending
                }
            }
        })
    }
}
