//! Receive: the listening sockets and the worker threads' receive loop.
//!
//! # Sockets
//!
//! Every worker opens its own UDP socket on each configured address with `SO_REUSEPORT`, so
//! the kernel spreads exporters over the workers by a hash of the sender's address and port:
//! one exporter always reaches the same worker, where its templates live, and no two workers
//! share a socket (no lock, no cache-line ping-pong on the queue).
//!
//! `SO_REUSEPORT` would also let a *second* flowplane (or anything else of the same user)
//! join the group and silently take part of the traffic. Before the group is bound, each
//! address is therefore bound once *without* the option: that fails with "address in use" when
//! anybody holds the port, and flowplane refuses to start.
//!
//! The receive buffer is asked for with `SO_RCVBUFFORCE` first (root or `CAP_NET_ADMIN`, not
//! capped by `net.core.rmem_max`), then `SO_RCVBUF`; the effective size is read back and a
//! warning is logged once when it is smaller than asked, naming the sysctl to raise.
//!
//! # The loop
//!
//! The backend is `recvmmsg` (see [`crate::sys::RecvBatch`]): each call fetches up to
//! `recv_batch` datagrams without blocking. A worker reads every socket in turn; when none had
//! anything it waits in `poll` for at most [`IDLE_TICK_MS`], so that windows still close on
//! time without traffic. The arrival time is read once per batch.
//!
//! The kernel's drop counter of each socket (`SO_MEMINFO`) is read once per window and on exit,
//! and its growth is added to the worker's `socket_drops`: a datagram the kernel dropped before
//! flowplane saw it still shows in the loss figures.
//!
//! # The io_uring loop
//!
//! Where the kernel allows it (see [`choose`]), a worker instead owns one io_uring with a
//! multishot `recvmsg` armed on each of its sockets and a ring of provided buffers
//! ([`crate::uring`]): one wait returns every datagram that arrived, each already in a buffer
//! the kernel picked, with its sender's address; each buffer goes back to the kernel as soon as
//! its datagram is decoded. The window clock, the drop counters and the shutdown drain are the
//! same as above. The `recvmmsg` loop stays as the fallback and can be forced with
//! `engine.receive = "recvmmsg"`.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tracing::{debug, info, warn};

use crate::EngineError;
use crate::config::{EngineConfig, ReceiveBackend};
use crate::merger::unix_ms;
use crate::ratelimit::RateLimit;
use crate::sys::{self, RecvBatch};
use crate::uring::{self, UringRx, UringSizes};
use crate::worker::Worker;

/// Longest wait in `poll` without traffic, in milliseconds.
pub const IDLE_TICK_MS: i32 = 100;

/// The sockets of every worker: `sockets[worker][address]`, and the bound addresses (with the
/// ports the kernel chose where the configuration said port 0).
#[derive(Debug)]
pub(crate) struct Listeners {
    pub(crate) sockets: Vec<Vec<Socket>>,
    pub(crate) bound: Vec<SocketAddr>,
}

/// Opens `workers` sockets on each of `addrs`.
///
/// # Errors
///
/// An address that is in use or cannot be bound, or an option that cannot be set.
pub(crate) fn open(
    addrs: &[SocketAddr],
    workers: usize,
    rcvbuf: usize,
) -> Result<Listeners, EngineError> {
    let mut sockets: Vec<Vec<Socket>> = (0..workers).map(|_| Vec::new()).collect();
    let mut bound = Vec::with_capacity(addrs.len());
    let mut warned = false;
    for &addr in addrs {
        if addr.port() != 0 {
            // Nobody else may hold the port, with or without SO_REUSEPORT (see module docs).
            let probe = new_socket(addr)?;
            probe
                .bind(&SockAddr::from(addr))
                .map_err(|source| EngineError::Bind { addr, source })?;
        }
        let mut actual = addr;
        for per_worker in &mut sockets {
            let s = new_socket(addr)?;
            s.set_reuse_port(true)
                .map_err(|source| EngineError::SocketOption {
                    option: "SO_REUSEPORT",
                    addr,
                    source,
                })?;
            set_rcvbuf(&s, addr, rcvbuf, &mut warned)?;
            s.set_nonblocking(true)
                .map_err(|source| EngineError::SocketOption {
                    option: "O_NONBLOCK",
                    addr,
                    source,
                })?;
            s.bind(&SockAddr::from(actual))
                .map_err(|source| EngineError::Bind { addr, source })?;
            if actual.port() == 0
                && let Some(local) = s.local_addr().ok().and_then(|a| a.as_socket())
            {
                // The first socket picked the port; the rest of the group joins it.
                actual.set_port(local.port());
            }
            per_worker.push(s);
        }
        bound.push(actual);
    }
    Ok(Listeners { sockets, bound })
}

fn new_socket(addr: SocketAddr) -> Result<Socket, EngineError> {
    Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(|source| EngineError::Bind { addr, source })
}

fn set_rcvbuf(
    s: &Socket,
    addr: SocketAddr,
    want: usize,
    warned: &mut bool,
) -> Result<(), EngineError> {
    if sys::force_rcvbuf(s.as_raw_fd(), want).is_err() {
        s.set_recv_buffer_size(want)
            .map_err(|source| EngineError::SocketOption {
                option: "SO_RCVBUF",
                addr,
                source,
            })?;
    }
    // Linux reports twice the usable size it granted (the rest is bookkeeping).
    let got = s.recv_buffer_size().unwrap_or(0) / 2;
    if got < want && !*warned {
        *warned = true;
        warn!(
            requested = want,
            granted = got,
            "Kernel capped the socket receive buffer; bursts may be dropped. Raise \
             net.core.rmem_max (sysctl -w net.core.rmem_max={want}) or run with CAP_NET_ADMIN."
        );
    }
    Ok(())
}

/// One worker's receive loop: runs until `stop` is set, then drains its sockets once, hands
/// its open window to the merger as its last share, and returns.
pub(crate) fn run_worker(
    mut worker: Worker,
    sockets: Vec<Socket>,
    batch: usize,
    stop: &AtomicBool,
) {
    let fds: Vec<RawFd> = sockets.iter().map(AsRawFd::as_raw_fd).collect();
    let mut rx = RecvBatch::new(batch);
    let mut drops = DropCounter::new(&fds);
    let mut err_log = RateLimit::new(std::time::Duration::from_secs(10));

    let mut window = None;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        let got_any = drain(&mut worker, &mut rx, &fds, batch, |error| {
            if let Some(held_back) = err_log.check(std::time::Instant::now()) {
                warn!(%error, held_back, "Receive failed.");
            }
        });

        let now = unix_ms();
        if window != Some(now / 1000) {
            // Once per window: the kernel's drop counters, then let the window close.
            worker.count_rx(0, drops.delta(&fds), 0);
            window = Some(now / 1000);
        }
        worker.maybe_rotate(now);
        if stopping {
            break;
        }
        if !got_any && let Err(error) = sys::poll_readable(&fds, IDLE_TICK_MS) {
            if let Some(held_back) = err_log.check(std::time::Instant::now()) {
                warn!(%error, held_back, "poll failed.");
            }
            std::thread::sleep(std::time::Duration::from_millis(IDLE_TICK_MS as u64));
        }
    }
    worker.count_rx(0, drops.delta(&fds), 0);
    worker.finish(unix_ms());
    debug!("Worker stopped.");
}

/// The receive path every worker will use, decided once at start: io_uring when asked for or
/// allowed (`auto`) and [`uring::probe`] succeeds, else `recvmmsg`. Logs the choice and why.
///
/// # Errors
///
/// `engine.receive = "io_uring"` on a kernel or process that cannot do it.
pub(crate) fn choose(cfg: &EngineConfig) -> Result<ReceiveBackend, EngineError> {
    let probed = match cfg.receive {
        ReceiveBackend::Recvmmsg => {
            info!(
                backend = "recvmmsg",
                "Receive path: recvmmsg (engine.receive = \"recvmmsg\")."
            );
            return Ok(ReceiveBackend::Recvmmsg);
        }
        ReceiveBackend::Auto | ReceiveBackend::IoUring => uring::probe(),
    };
    match (probed, cfg.receive) {
        (Ok(()), _) => {
            info!(
                backend = "io_uring",
                buffers = cfg.uring_buffers,
                datagram_bytes = cfg.uring_datagram_bytes,
                "Receive path: io_uring multishot recvmsg with provided buffers (probe passed)."
            );
            Ok(ReceiveBackend::IoUring)
        }
        (Err(reason), ReceiveBackend::IoUring) => Err(EngineError::IoUring { reason }),
        (Err(reason), _) => {
            info!(
                backend = "recvmmsg",
                %reason,
                "Receive path: recvmmsg, because io_uring is not usable here."
            );
            Ok(ReceiveBackend::Recvmmsg)
        }
    }
}

/// The sizes of a worker's ring from the configuration.
pub(crate) fn uring_sizes(cfg: &EngineConfig) -> UringSizes {
    UringSizes {
        entries: cfg.uring_entries,
        buffers: u16::try_from(cfg.uring_buffers).unwrap_or(32_768),
        datagram_bytes: cfg.uring_datagram_bytes,
    }
}

/// Sets up a worker's ring on its sockets. Call it on the worker's own thread: the ring accepts
/// submissions only from the thread that created it.
pub(crate) fn new_uring(sockets: &[Socket], sizes: UringSizes) -> std::io::Result<UringRx> {
    let fds: Vec<RawFd> = sockets.iter().map(AsRawFd::as_raw_fd).collect();
    UringRx::new(&fds, sizes)
}

/// [`run_worker`] through io_uring.
pub(crate) fn run_worker_uring(
    mut worker: Worker,
    sockets: Vec<Socket>,
    mut ring: UringRx,
    drain_batch: usize,
    stop: &AtomicBool,
) {
    let fds: Vec<RawFd> = sockets.iter().map(AsRawFd::as_raw_fd).collect();
    let mut drops = DropCounter::new(&fds);
    let mut err_log = RateLimit::new(std::time::Duration::from_secs(10));
    let tick = std::time::Duration::from_millis(IDLE_TICK_MS as u64);

    let mut window = None;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        // The arrival time is read once per wait: completions come in batches.
        let mut now = unix_ms();
        let mut truncated = 0;
        let waited = ring.wait(tick, |d| {
            truncated += u64::from(d.truncated);
            worker.on_datagram(d.src.unwrap_or(UNKNOWN_SRC), now, d.payload);
        });
        match waited {
            Ok(stats) => {
                worker.count_rx(truncated, 0, stats.errors);
                if stats.errors > 0
                    && let Some(held_back) = err_log.check(std::time::Instant::now())
                {
                    let error = stats.last_error.map(std::io::Error::from_raw_os_error);
                    warn!(?error, held_back, "io_uring receive failed.");
                }
            }
            Err(error) => {
                worker.count_rx(truncated, 0, 1);
                if let Some(held_back) = err_log.check(std::time::Instant::now()) {
                    warn!(%error, held_back, "io_uring wait failed.");
                }
                std::thread::sleep(tick);
            }
        }

        now = unix_ms();
        if window != Some(now / 1000) {
            worker.count_rx(0, drops.delta(&fds), 0);
            window = Some(now / 1000);
        }
        worker.maybe_rotate(now);
        if stopping {
            break;
        }
    }

    // Datagrams in flight come out with the cancellations; what is still queued in the
    // sockets is read once more the portable way.
    let now = unix_ms();
    let mut truncated = 0;
    let released = ring.shutdown(|d| {
        truncated += u64::from(d.truncated);
        worker.on_datagram(d.src.unwrap_or(UNKNOWN_SRC), now, d.payload);
    });
    worker.count_rx(truncated, 0, 0);
    drop(ring);
    if !released {
        warn!("io_uring requests did not finish cancelling within 1 s.");
    }
    let mut rx = RecvBatch::new(drain_batch);
    drain(&mut worker, &mut rx, &fds, drain_batch, |error| {
        warn!(%error, "Receive failed during the last drain.");
    });
    worker.count_rx(0, drops.delta(&fds), 0);
    worker.finish(unix_ms());
    drop(sockets);
    debug!("Worker stopped.");
}

/// Reads every socket with `recvmmsg` until it is empty, at most [`MAX_BATCHES_PER_TURN`]
/// batches each (so one busy socket cannot starve the others or the window clock), and hands
/// every datagram to the worker with the time of its batch. A receive error is counted, given
/// to `on_error`, and ends that socket's turn. Returns whether anything arrived.
fn drain(
    worker: &mut Worker,
    rx: &mut RecvBatch,
    fds: &[RawFd],
    batch: usize,
    mut on_error: impl FnMut(std::io::Error),
) -> bool {
    let mut got_any = false;
    for &fd in fds {
        for _ in 0..MAX_BATCHES_PER_TURN {
            match rx.recv(fd) {
                Ok(0) => break,
                Ok(n) => {
                    got_any = true;
                    let now = unix_ms();
                    let mut truncated = 0;
                    for i in 0..n {
                        let Some(d) = rx.get(i) else { break };
                        truncated += u64::from(d.truncated);
                        worker.on_datagram(d.src.unwrap_or(UNKNOWN_SRC), now, d.payload);
                    }
                    worker.count_rx(truncated, 0, 0);
                    if n < batch {
                        break;
                    }
                }
                Err(error) => {
                    worker.count_rx(0, 0, 1);
                    on_error(error);
                    break;
                }
            }
        }
    }
    got_any
}

/// Per-socket kernel drop counters, turned into deltas.
struct DropCounter {
    last: Vec<Option<u32>>,
}

impl DropCounter {
    fn new(fds: &[RawFd]) -> Self {
        Self {
            last: fds.iter().map(|&fd| sys::socket_drops(fd).ok()).collect(),
        }
    }

    fn delta(&mut self, fds: &[RawFd]) -> u64 {
        let mut total = 0;
        for (last, &fd) in self.last.iter_mut().zip(fds) {
            let Ok(now) = sys::socket_drops(fd) else {
                continue;
            };
            if let Some(prev) = *last {
                total += u64::from(now.wrapping_sub(prev));
            }
            *last = Some(now);
        }
        total
    }
}

/// Batches read from one socket before moving to the next.
const MAX_BATCHES_PER_TURN: usize = 16;

/// Stands in for a sender address of a family the kernel reported oddly (never seen on UDP);
/// the datagram is still decoded and counted.
const UNKNOWN_SRC: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_port_somebody_holds() {
        let holder = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = holder.local_addr().unwrap();
        let e = open(&[addr], 2, 65_536).unwrap_err();
        assert!(matches!(e, EngineError::Bind { .. }), "{e}");
    }

    #[test]
    fn port_zero_gives_every_worker_the_same_port() {
        let l = open(&["127.0.0.1:0".parse().unwrap()], 3, 65_536).unwrap();
        let port = l.bound[0].port();
        assert_ne!(port, 0);
        for w in &l.sockets {
            let a = w[0].local_addr().unwrap().as_socket().unwrap();
            assert_eq!(a.port(), port);
        }
        // And the group holds the port against outsiders.
        assert!(std::net::UdpSocket::bind(l.bound[0]).is_err());
    }
}
