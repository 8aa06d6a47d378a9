//! Choosing where tensors live, and setting up the CPU so candle runs at full speed.
use std::fmt;
use std::str::FromStr;

use candle_core::Device;

use crate::error::{Result, VocError};

/// What the user asked for with `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// CUDA device 0 when built with `cuda` and a GPU is present, otherwise the CPU.
    #[default]
    Auto,
    /// The CPU (`cpu`).
    Cpu,
    /// CUDA device `N` (`cuda:N`; `cuda` and `gpu` mean 0). Needs the `cuda` feature.
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = VocError;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            _ => {
                let ordinal = s
                    .strip_prefix("cuda:")
                    .and_then(|n| n.parse::<usize>().ok())
                    .ok_or_else(|| {
                        VocError::BadDevice(format!("'{s}': expected cpu, cuda, cuda:N or auto"))
                    })?;
                Ok(Self::Cuda(ordinal))
            }
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => write!(f, "auto"),
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// Opens the device. `Auto` falls back to the CPU; an explicit `cuda` that cannot be opened is an error.
    pub fn open(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Auto => Ok(if cuda_available() {
                Device::new_cuda(0).unwrap_or(Device::Cpu)
            } else {
                Device::Cpu
            }),
            Self::Cuda(ordinal) => {
                if !cfg!(feature = "cuda") {
                    return Err(VocError::BadDevice(format!(
                        "cuda:{ordinal} requested but this build has no CUDA support; rebuild with `--features cuda`"
                    )));
                }
                Device::new_cuda(ordinal)
                    .map_err(|e| VocError::BadDevice(format!("cannot open cuda:{ordinal}: {e}")))
            }
        }
    }
}

/// True when this build has CUDA support and a GPU can be opened.
pub fn cuda_available() -> bool {
    cfg!(feature = "cuda") && candle_core::utils::cuda_is_available()
}

/// Short human name of a device: `cpu` or `cuda:N`.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".to_string(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// The number of CPU threads voc runs with: `RAYON_NUM_THREADS` when it holds a positive integer,
/// otherwise every core this process may use. Reads the environment, never changes it.
pub fn cpu_threads() -> usize {
    threads_from_env().unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    })
}

/// `RAYON_NUM_THREADS` when it holds a positive integer (what candle and rayon accept).
fn threads_from_env() -> Option<usize> {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
}

/// How many times candle's own worker threads spin waiting for their next element-wise op before
/// they sleep (its `CANDLE_BARRIER_POOL_SPIN_LIMIT`; candle's default is 25,000).
///
/// candle 0.11 runs element-wise ops on a pool of its own (`candle-bp-*` threads) next to rayon's,
/// which runs voc's kernels. Spinning 25,000 times after every op, its threads hold cores that the
/// convolutions and gemms then wait for: on 2 cores, `perf` put 27% of an attack step's samples in
/// that spin. Measured 2026-11-30 (`voc bench`, 2 threads, 10 iterations; default spin -> 100):
/// MobileNetV2 inference batch 16 238 -> 171 ms, batch 1 18.9 -> 10.7 ms, DeepLabV3 513 88 -> 54 ms,
/// the DeepLabV3 257 attack step 63 -> 52 ms; the MobileNetV2 training step unchanged (377 / 378 ms).
pub const CANDLE_SPIN_LIMIT: u32 = 100;

/// Sets `RAYON_NUM_THREADS` to [`cpu_threads`] unless it already holds a positive integer, and
/// `CANDLE_BARRIER_POOL_SPIN_LIMIT` to [`CANDLE_SPIN_LIMIT`] unless it is set, and makes the calling
/// thread one of the threads of rayon's global pool when there are two or more; returns the thread
/// count.
///
/// voc's CPU kernels split their work with rayon. Called from a thread outside the pool, each kernel
/// hands its work to the pool's threads and sleeps until they are done: two thread wake-ups per
/// operation, which on a small network at batch 1 cost more than the arithmetic (`perf`: a fifth of a
/// MobileNetV2 inference in the scheduler). With `main` a member of the pool, a kernel called from it
/// runs its share itself and the other threads steal the rest; `RAYON_NUM_THREADS` counts `main`.
/// Measured 2026-11-30 (`voc bench`, 2 threads): MobileNetV2 batch 1 9.2 -> 7.7 ms, batch 16 143 ->
/// 124 ms.
///
/// candle asks for the thread count on every matmul and, without the variable, re-reads /proc/cpuinfo
/// each time; on small convolutions that costs more than the arithmetic. So every program (the `voc`
/// binary, examples, benches) calls this first thing in `main`. Libraries and tests must not: they
/// read the count with [`cpu_threads`].
///
/// # Safety
///
/// This writes the process environment ([`std::env::set_var`]), which is undefined behaviour while
/// another thread may read or write it (glibc's `getenv` is not synchronised with `setenv`). Call it
/// only while the calling thread is the process's only thread: first thing in `main`, before any
/// thread pool, runtime or spawned thread exists, and never from a test (the harness runs tests on
/// several threads).
pub unsafe fn init_cpu_threads() -> usize {
    let n = cpu_threads();
    if threads_from_env().is_none() {
        // SAFETY: the caller guarantees no other thread exists (this function's contract).
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
    }
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        // SAFETY: as above.
        unsafe {
            std::env::set_var(
                "CANDLE_BARRIER_POOL_SPIN_LIMIT",
                CANDLE_SPIN_LIMIT.to_string(),
            )
        };
    }
    // With one thread `main` stays out: a pool made of `main` alone would run no job handed to it by
    // another thread (a data loader) while `main` waits on that thread. With more, the others do.
    // Fails only when the global pool already exists (a second call): it then stays as it is.
    if n > 1 {
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .use_current_thread()
            .build_global();
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_specs() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("CUDA".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        assert_eq!("auto".parse::<DeviceSpec>().unwrap(), DeviceSpec::Auto);
        let err = "cuda:x".parse::<DeviceSpec>().unwrap_err().to_string();
        assert!(err.contains("cuda:N"), "{err}");
        assert!("tpu".parse::<DeviceSpec>().is_err());
    }

    #[test]
    fn auto_and_cpu_open_without_gpu() {
        assert!(DeviceSpec::Cpu.open().unwrap().is_cpu());
        let auto = DeviceSpec::Auto.open().unwrap();
        assert_eq!(auto.is_cpu(), !cuda_available());
    }

    #[test]
    fn cuda_without_feature_is_a_clear_error() {
        if !cfg!(feature = "cuda") {
            let err = DeviceSpec::Cuda(0).open().unwrap_err().to_string();
            assert!(err.contains("--features cuda"), "{err}");
        }
    }

    #[test]
    fn thread_count_is_positive() {
        assert!(cpu_threads() >= 1);
    }
}
