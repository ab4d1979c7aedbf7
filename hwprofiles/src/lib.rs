//! Hardware profiles: how flowplane lays out threads and buffers on the 8-, 16- and 32-core
//! tiers of the sizing table.
//!
//! TODO(#4): profiles as data files, machine inspection and `flowplane profile` come with the
//! data-plane issue. Until then the engine takes its layout from the configuration file.

/// Number of logical CPUs the process may run on (at least 1).
pub fn available_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
