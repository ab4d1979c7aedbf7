//! The receive backends behind one small interface, for benchmarks and tools that want to read
//! a set of UDP sockets exactly as a worker does: [`Receiver::new`] with a backend, then
//! [`Receiver::recv`] in a loop. The workers use the same two paths (`crate::rx`).

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::Duration;

use crate::config::ReceiveBackend;
use crate::sys::{self, RecvBatch};
use crate::uring::{self, UringRx, UringSizes};

/// A reader of some UDP sockets through one backend.
pub struct Receiver {
    inner: Inner,
    fds: Vec<RawFd>,
}

enum Inner {
    Uring(Box<UringRx>),
    Mmsg(RecvBatch),
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("backend", &self.backend())
            .field("sockets", &self.fds.len())
            .finish()
    }
}

impl Receiver {
    /// A receiver for `fds` (non-blocking UDP sockets the caller keeps open for the
    /// receiver's lifetime). `Auto` means io_uring when [`io_uring_usable`] says so. The
    /// receiver stays on the thread that created it (an io_uring ring here takes submissions
    /// from its creating thread only).
    ///
    /// # Errors
    ///
    /// io_uring was asked for and cannot be set up.
    pub fn new(backend: ReceiveBackend, fds: &[RawFd], batch: usize) -> io::Result<Self> {
        let uring = match backend {
            ReceiveBackend::Recvmmsg => false,
            ReceiveBackend::IoUring => true,
            ReceiveBackend::Auto => io_uring_usable().is_ok(),
        };
        let inner = if uring {
            let sizes = UringSizes {
                entries: 256,
                buffers: 1_024,
                datagram_bytes: 9_216,
            };
            Inner::Uring(Box::new(UringRx::new(fds, sizes)?))
        } else {
            Inner::Mmsg(RecvBatch::new(batch))
        };
        Ok(Self {
            inner,
            fds: fds.to_vec(),
        })
    }

    /// The backend in use.
    pub fn backend(&self) -> ReceiveBackend {
        match self.inner {
            Inner::Uring(_) => ReceiveBackend::IoUring,
            Inner::Mmsg(_) => ReceiveBackend::Recvmmsg,
        }
    }

    /// Hands every datagram available now (waiting up to `timeout` when there is none) to
    /// `on_datagram` as (sender, payload). Returns how many there were.
    ///
    /// # Errors
    ///
    /// What the kernel reported for the wait or the receive.
    pub fn recv(
        &mut self,
        timeout: Duration,
        mut on_datagram: impl FnMut(Option<SocketAddr>, &[u8]),
    ) -> io::Result<usize> {
        let mut n = 0;
        match &mut self.inner {
            Inner::Uring(ring) => {
                ring.wait(timeout, |d| {
                    n += 1;
                    on_datagram(d.src, d.payload);
                })?;
            }
            Inner::Mmsg(batch) => {
                for _ in 0..2 {
                    for &fd in &self.fds {
                        loop {
                            let got = batch.recv(fd)?;
                            for i in 0..got {
                                if let Some(d) = batch.get(i) {
                                    n += 1;
                                    on_datagram(d.src, d.payload);
                                }
                            }
                            if got == 0 {
                                break;
                            }
                        }
                    }
                    if n > 0 {
                        break;
                    }
                    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
                    if !sys::poll_readable(&self.fds, ms)? {
                        break;
                    }
                }
            }
        }
        Ok(n)
    }
}

/// Whether io_uring receive works on this kernel and process (see `engine.receive`); `Err`
/// says why not.
///
/// # Errors
///
/// The reason io_uring cannot be used.
pub fn io_uring_usable() -> Result<(), String> {
    uring::probe()
}
