//! Hardware profiles: how flowplane lays out threads and buffers on the 8-, 16- and 32-core
//! tiers of the sizing table (and the 3 x 16-core HA tier), and what a given machine will hold.
//!
//! Three parts:
//!
//! * [`profile`]: the profiles, data files in `hwprofiles/profiles/*.toml` compiled into the
//!   binary, parsed into [`Profile`] and validated;
//! * [`inspect`]: what the machine has (cores, memory, NICs, disks, io_uring, kernel settings),
//!   read from `/sys` and `/proc` under an injectable root so that tests feed fake trees;
//! * [`verdict`]: which profile fits, what rate the machine should hold, which part caps it and
//!   what to change; a profile that does not fit is refused with what is missing.
//!
//! Nothing here touches the engine: `flowplane profile` prints the verdict, and `flowplane run
//! --profile` maps the profile's numbers onto the engine and sink settings. Rules and sources of
//! the numbers: `docs/hardware-profiles.md`.
#![warn(missing_docs)]

pub mod inspect;
pub mod profile;
pub mod verdict;

pub use inspect::Machine;
pub use profile::{Profile, ProfileError, Role};
pub use verdict::{Cap, Misfit, Part, Verdict, assess, check_fit};

/// Number of logical CPUs the process may run on (at least 1).
pub fn available_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
