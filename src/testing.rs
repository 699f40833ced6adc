//! The surface the crate's integration tests (`tests/`) and benchmarks (`benches/`)
//! use: a few internals re-exported under paths that mirror the private modules.
//!
//! Not a stable API: it changes with the tests, and nothing outside this repository
//! should use it. The public interface of the crate is the C ABI, [`crate::ffi`]
//! (with the DLPack types of [`crate::dlpack`]).

pub use crate::endpoint::{ClientPool, ClusterToken, Limits};
pub use crate::engine::Target;
pub use crate::engine::{Context, ContextConfig, Fetched, NodeShareSettings};
pub use crate::error::{Error, ErrorKind};
pub use crate::layout::Place;
pub use crate::metadata::{Metadata, Producer};
pub use crate::object_id::ObjectId;
pub use crate::store::{CopyKind, ObjectStore};
pub use crate::tensor::{Tensor, TensorMeta, MAX_NDIM};
#[cfg(feature = "gloo")]
pub use crate::transport::gloo::LANES_ENV as GLOO_LANES_ENV;
pub use crate::transport_kind::TransportKind;

/// Limits of the metadata record.
pub mod metadata {
    pub use crate::metadata::{MAX_ENDPOINT_LEN, MAX_HOST_ID_LEN, MAX_ID_LEN, VERSION};
}

/// Per-transport counters.
pub mod stats {
    pub use crate::stats::{endpoint_snapshot, snapshot, snapshot_path, Path};
}

/// The test-only hold points (environment variable names).
pub mod hold {
    pub use crate::hold::{DIR_ENV, POINTS_ENV};
}

/// Where shared libraries are looked for.
pub mod dylib {
    pub use crate::dylib::add_python_prefix;
}

/// The CUDA driver, its libraries and the device memory pool.
#[cfg(feature = "cuda")]
pub mod cuda {
    pub use crate::cuda::report;

    /// The stream current on each device.
    pub mod current {
        pub use crate::cuda::current::set;
    }

    /// CUDA driver calls.
    pub mod driver {
        pub use crate::cuda::driver::{device_count, download, free, init, malloc, upload};
    }

    /// Loading the CUDA and NCCL libraries.
    pub mod library {
        pub use crate::cuda::library::{
            driver, nccl, nccl_candidates, runtime, runtime_candidates,
        };
    }

    /// NCCL.
    pub mod nccl {
        pub use crate::cuda::nccl::version;
    }

    /// The device memory pool.
    pub mod pool {
        pub use crate::cuda::pool::{cached, Lease};
    }
}

/// The CUDA IPC transport.
#[cfg(feature = "cuda")]
pub mod cuda_ipc {
    pub use crate::transport::cuda_ipc::open_mappings;
}

/// The NIXL transport.
#[cfg(feature = "nixl")]
pub mod nixl {
    pub use crate::transport::nixl::{available, registration_stats};

    /// The NIXL agent.
    pub mod agent {
        pub use crate::transport::nixl::agent::{progress_thread_enabled, PROGRESS_THREAD_ENV};
    }

    /// Loading the NIXL library.
    pub mod library {
        pub use crate::transport::nixl::library::candidates;
    }

    /// The NIXL transport record.
    pub mod record {
        pub use crate::transport::nixl::record::{Desc, Record};
    }
}
