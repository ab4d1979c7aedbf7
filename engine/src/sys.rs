//! Every `unsafe` block of the engine: batched receive (`recvmmsg`), batched send (`sendmmsg`,
//! for the load generator), cache prefetch for the aggregation tables, `poll`, the socket
//! options that neither `std` nor `socket2` expose (`SO_MEMINFO` for the kernel's drop counter,
//! `SO_RCVBUFFORCE`), and CPU masks of more than one core (`sched_getaffinity`,
//! `sched_setaffinity`; `core_affinity` only pins to a single core).
//!
//! Linux only, like the appliance flowplane runs on.
//!
//! # Buffer ownership
//!
//! A [`RecvBatch`] owns all its memory (datagram buffers, address slots, `iovec`s and
//! `mmsghdr`s) in boxed slices that are allocated once in [`RecvBatch::new`] and
//! never reallocated, so the raw pointers written into the headers stay valid for the batch's
//! lifetime. The kernel writes into that memory only during the `recvmmsg` call, which borrows
//! the batch mutably; afterwards the batch hands out shared borrows of what was received until
//! the next call. Nothing is shared between threads: each worker owns its batch.
#![allow(unsafe_code)]

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Bytes per datagram buffer: the largest UDP payload over IPv6 jumbo-less paths (65535 minus
/// the 8-byte UDP header would do for IPv4; one size fits both).
pub(crate) const DATAGRAM_MAX: usize = 65_535;

/// One received datagram, borrowed from the batch.
#[derive(Debug)]
pub(crate) struct Received<'a> {
    /// Sender; `None` when the kernel gave an address family flowplane does not read.
    pub(crate) src: Option<SocketAddr>,
    /// The payload (cut at [`DATAGRAM_MAX`] if it was larger).
    pub(crate) payload: &'a [u8],
    /// The kernel set `MSG_TRUNC`: the datagram was larger than the buffer.
    pub(crate) truncated: bool,
}

/// Preallocated state for `recvmmsg` of up to `n` datagrams.
pub(crate) struct RecvBatch {
    bufs: Box<[u8]>,
    addrs: Box<[libc::sockaddr_storage]>,
    iovecs: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
    received: usize,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("capacity", &self.hdrs.len())
            .field("received", &self.received)
            .finish()
    }
}

impl RecvBatch {
    /// A batch of `n` (at least 1) datagram buffers of [`DATAGRAM_MAX`] bytes.
    pub(crate) fn new(n: usize) -> Self {
        let n = n.max(1);
        // SAFETY:
        // - `sockaddr_storage`, `iovec` and `mmsghdr` are plain C structs for which all-zero
        //   bytes are a valid value (null pointers, zero lengths).
        let (addrs, iovecs, hdrs) = unsafe {
            (
                (0..n)
                    .map(|_| zeroed())
                    .collect::<Box<[libc::sockaddr_storage]>>(),
                (0..n).map(|_| zeroed()).collect::<Box<[libc::iovec]>>(),
                (0..n).map(|_| zeroed()).collect::<Box<[libc::mmsghdr]>>(),
            )
        };
        Self {
            bufs: vec![0u8; n * DATAGRAM_MAX].into_boxed_slice(),
            addrs,
            iovecs,
            hdrs,
            received: 0,
        }
    }

    /// Receives up to the batch size of datagrams from `fd` without blocking. Returns how many
    /// arrived (0 when none was waiting).
    ///
    /// # Errors
    ///
    /// What `recvmmsg` reported, except `EAGAIN`/`EWOULDBLOCK` and `EINTR` (0 datagrams).
    pub(crate) fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.received = 0;
        let n = self.hdrs.len();
        let bufs = self.bufs.as_mut_ptr();
        for i in 0..n {
            // The kernel overwrites the lengths on every call, so every header is rebuilt.
            self.iovecs[i] = libc::iovec {
                // SAFETY:
                // - `i * DATAGRAM_MAX + DATAGRAM_MAX <= bufs.len()` because `bufs` holds `n`
                //   buffers of DATAGRAM_MAX bytes, so the offset stays inside the allocation.
                iov_base: unsafe { bufs.add(i * DATAGRAM_MAX) }.cast(),
                iov_len: DATAGRAM_MAX,
            };
            let h = &mut self.hdrs[i];
            h.msg_len = 0;
            h.msg_hdr.msg_name = (&raw mut self.addrs[i]).cast();
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &raw mut self.iovecs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
        }

        // SAFETY:
        // - `hdrs` holds `n` initialised `mmsghdr`s whose name and iovec pointers point into
        //   `self.addrs` and `self.iovecs`/`self.bufs`, each with the
        //   length written beside it; all are owned by `self`, which is borrowed mutably for
        //   the call, so nothing else reads or moves them while the kernel writes.
        // - The kernel writes at most the given lengths into each buffer.
        // - `fd` is a socket owned by the caller for the duration of the call.
        let rc = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        self.received = rc as usize;
        Ok(self.received)
    }

    /// The `i`-th datagram of the last receive (`i < len()`).
    pub(crate) fn get(&self, i: usize) -> Option<Received<'_>> {
        if i >= self.received {
            return None;
        }
        let h = &self.hdrs[i];
        let len = (h.msg_len as usize).min(DATAGRAM_MAX);
        let payload = &self.bufs[i * DATAGRAM_MAX..i * DATAGRAM_MAX + len];
        Some(Received {
            src: sockaddr_to_std(&self.addrs[i], h.msg_hdr.msg_namelen),
            payload,
            truncated: h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
        })
    }
}

/// Asks the CPU to bring the cache line holding `p` into all cache levels, without waiting
/// for it: the aggregation tables prefetch the slots of a batch of keys before updating them,
/// so that the cache misses of a batch overlap instead of following one another.
#[inline(always)]
pub(crate) fn prefetch<T>(p: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY:
    // - PREFETCHT0 is a hint: it never faults, reads nothing the program can observe and
    //   changes no architectural state, and `p` comes from a live reference anyway.
    // - SSE, which provides it, is part of the x86_64 baseline.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
            std::ptr::from_ref(p).cast(),
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Most datagrams [`send_connected`] passes to one `sendmmsg`.
pub(crate) const SEND_BATCH_MAX: usize = 64;

/// Sends the first [`SEND_BATCH_MAX`] of `datagrams` with one `sendmmsg` on the connected UDP
/// socket `fd` (blocking unless the socket is non-blocking). Returns how many the kernel took,
/// which may be fewer than asked.
///
/// # Errors
///
/// What `sendmmsg` reported when it sent nothing (e.g. `ECONNREFUSED` after an ICMP port
/// unreachable from a collector that is not listening).
pub(crate) fn send_connected(fd: RawFd, datagrams: &[&[u8]]) -> io::Result<usize> {
    let n = datagrams.len().min(SEND_BATCH_MAX);
    if n == 0 {
        return Ok(0);
    }
    // SAFETY:
    // - `iovec` and `mmsghdr` are plain C structs for which all-zero bytes are valid values
    //   (null pointers, zero lengths).
    let mut iovecs: [libc::iovec; SEND_BATCH_MAX] = unsafe { zeroed() };
    // SAFETY:
    // - As above.
    let mut hdrs: [libc::mmsghdr; SEND_BATCH_MAX] = unsafe { zeroed() };
    for (i, d) in datagrams[..n].iter().enumerate() {
        iovecs[i] = libc::iovec {
            iov_base: d.as_ptr().cast_mut().cast(),
            iov_len: d.len(),
        };
        hdrs[i].msg_hdr.msg_iov = &raw mut iovecs[i];
        hdrs[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY:
    // - The first `n` headers each point at one `iovec` of `iovecs`, which points at a
    //   datagram borrowed from `datagrams` with its exact length; both arrays and the
    //   datagrams outlive the call, and the kernel only reads the payloads.
    // - `msg_name` is null: the socket is connected, so the kernel uses its peer.
    // - `fd` is a socket owned by the caller for the duration of the call.
    let rc = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), n as libc::c_uint, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc as usize)
}

/// Waits until one of `fds` is readable or `timeout_ms` passes. Returns whether any is.
///
/// # Errors
///
/// What `poll` reported, except `EINTR` (returns `false`).
pub(crate) fn poll_readable(fds: &[RawFd], timeout_ms: i32) -> io::Result<bool> {
    let mut pfds: [libc::pollfd; MAX_POLL_FDS] = [libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    }; MAX_POLL_FDS];
    let n = fds.len().min(MAX_POLL_FDS);
    for (p, &fd) in pfds.iter_mut().zip(&fds[..n]) {
        p.fd = fd;
        p.events = libc::POLLIN;
    }
    // SAFETY:
    // - `pfds` is a live, initialised array of `MAX_POLL_FDS >= n` pollfd entries on this
    //   stack frame; the kernel reads `n` of them and writes only their `revents`.
    let rc = unsafe { libc::poll(pfds.as_mut_ptr(), n as libc::nfds_t, timeout_ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(e)
        };
    }
    Ok(rc > 0)
}

/// Sockets one worker polls at most (one per listen address).
pub(crate) const MAX_POLL_FDS: usize = 64;

/// The socket's cumulative count of datagrams the kernel dropped because the receive queue was
/// full (or the socket's memory limit was hit): `SK_MEMINFO_DROPS` of `SO_MEMINFO` (Linux 4.7
/// and later). It wraps at 2^32; callers take differences with `wrapping_sub`.
///
/// # Errors
///
/// What `getsockopt` reported, or `Unsupported` when the kernel's answer is too short.
pub(crate) fn socket_drops(fd: RawFd) -> io::Result<u32> {
    let mut info = [0u32; MEMINFO_WORDS];
    let mut len = size_of::<[u32; MEMINFO_WORDS]>() as libc::socklen_t;
    // SAFETY:
    // - `info` and `len` live on this stack frame for the call; `len` holds `info`'s size, and
    //   the kernel writes at most that many bytes into `info` and the written size into `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &raw mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    if (len as usize) < (SK_MEMINFO_DROPS + 1) * size_of::<u32>() {
        return Err(io::Error::from(io::ErrorKind::Unsupported));
    }
    Ok(info[SK_MEMINFO_DROPS])
}

/// Index of the drop counter in the `SO_MEMINFO` array (`include/uapi/linux/sock_diag.h`).
const SK_MEMINFO_DROPS: usize = 8;
/// Room for the `SO_MEMINFO` array (9 entries today) and later additions.
const MEMINFO_WORDS: usize = 16;

/// Sets the receive buffer past `net.core.rmem_max` (`SO_RCVBUFFORCE`, needs `CAP_NET_ADMIN`).
///
/// # Errors
///
/// What `setsockopt` reported (`EPERM` without the capability).
pub(crate) fn force_rcvbuf(fd: RawFd, bytes: usize) -> io::Result<()> {
    let v = i32::try_from(bytes).unwrap_or(i32::MAX);
    set_int_opt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, v)
}

fn set_int_opt(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY:
    // - `value` lives on this stack frame for the call, and the length passed is its size;
    //   the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const value).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A set of logical CPUs, as the kernel's `cpu_set_t` (CPUs 0 to `CPU_SETSIZE - 1`, 1024).
#[derive(Clone, Copy)]
pub(crate) struct CpuSet(libc::cpu_set_t);

impl CpuSet {
    /// The set of `cores`; numbers at or above `CPU_SETSIZE` are left out (no kernel can run a
    /// thread there through this interface, so they are never available anyway).
    pub(crate) fn from_cores(cores: impl IntoIterator<Item = usize>) -> Self {
        // SAFETY:
        // - `cpu_set_t` is a plain array of integers; all-zero bytes are the empty set.
        let mut set: libc::cpu_set_t = unsafe { zeroed() };
        for c in cores.into_iter().filter(|&c| c < CPU_SETSIZE) {
            // SAFETY:
            // - `c < CPU_SETSIZE`, so the bit lies inside `set` (libc indexes the array with a
            //   bounds check anyway); `set` is a live local borrowed mutably for the call.
            unsafe { libc::CPU_SET(c, &mut set) };
        }
        Self(set)
    }

    /// The CPUs in the set, ascending.
    pub(crate) fn cores(&self) -> Vec<usize> {
        (0..CPU_SETSIZE)
            // SAFETY:
            // - `c < CPU_SETSIZE`, inside the set; `self.0` is borrowed shared for the call.
            .filter(|&c| unsafe { libc::CPU_ISSET(c, &self.0) })
            .collect()
    }
}

impl std::fmt::Debug for CpuSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("CpuSet").field(&self.cores()).finish()
    }
}

/// The CPU mask of the calling thread.
///
/// # Errors
///
/// What `sched_getaffinity` reported.
pub(crate) fn thread_affinity() -> io::Result<CpuSet> {
    let mut set = CpuSet::from_cores([]);
    // SAFETY:
    // - pid 0 is the calling thread; `set.0` lives on this stack frame for the call and the
    //   size passed is its own, so the kernel writes at most that many bytes into it.
    let rc = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &raw mut set.0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(set)
}

/// Sets the CPU mask of the calling thread; threads it creates afterwards inherit it.
///
/// # Errors
///
/// What `sched_setaffinity` reported (`EINVAL` when no CPU of the set is available to the
/// process).
pub(crate) fn set_thread_affinity(set: &CpuSet) -> io::Result<()> {
    // SAFETY:
    // - pid 0 is the calling thread; `set.0` is borrowed for the call and the size passed is
    //   its own; the kernel only reads it.
    let rc = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set.0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// CPUs a `cpu_set_t` can name (glibc's and the libc crate's fixed size).
const CPU_SETSIZE: usize = libc::CPU_SETSIZE as usize;

/// Converts what the kernel wrote into a `sockaddr_storage` to a [`SocketAddr`]. IPv4-mapped
/// IPv6 senders (a dual-stack socket) come back as IPv4.
fn sockaddr_to_std(ss: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match i32::from(ss.ss_family) {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            // SAFETY:
            // - The family says the storage holds a `sockaddr_in`, the kernel wrote at least its
            //   size, and `sockaddr_storage` is aligned for every sockaddr type.
            let sin = unsafe { &*(std::ptr::from_ref(ss).cast::<libc::sockaddr_in>()) };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY:
            // - As above, for `sockaddr_in6`.
            let sin6 = unsafe { &*(std::ptr::from_ref(ss).cast::<libc::sockaddr_in6>()) };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            let port = u16::from_be(sin6.sin6_port);
            Some(match ip.to_ipv4_mapped() {
                Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, port)),
                None => SocketAddr::V6(SocketAddrV6::new(
                    ip,
                    port,
                    sin6.sin6_flowinfo,
                    sin6.sin6_scope_id,
                )),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    use super::*;

    #[test]
    fn receives_a_batch_with_sources() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..5u8 {
            tx.send_to(&[i; 100], to).unwrap();
        }
        assert!(poll_readable(&[rx.as_raw_fd()], 1_000).unwrap());

        let mut b = RecvBatch::new(4);
        let mut got = Vec::new();
        while got.len() < 5 {
            let n = b.recv(rx.as_raw_fd()).unwrap();
            assert!(n <= 4);
            for i in 0..n {
                let r = b.get(i).unwrap();
                assert_eq!(r.src, Some(tx.local_addr().unwrap()));
                assert!(!r.truncated);
                got.push(r.payload.to_vec());
            }
            assert!(b.get(n).is_none());
        }
        assert_eq!(got, (0..5u8).map(|i| vec![i; 100]).collect::<Vec<_>>());
        assert_eq!(b.recv(rx.as_raw_fd()).unwrap(), 0, "nothing left: no block");
        assert!(!poll_readable(&[rx.as_raw_fd()], 10).unwrap());
    }

    #[test]
    fn cpu_sets_round_trip_and_the_mask_can_be_narrowed_and_restored() {
        let set = CpuSet::from_cores([0, 3, 64, 5_000]);
        assert_eq!(set.cores(), [0, 3, 64]);

        // On a thread of its own, so that no other test sees the narrowed mask.
        std::thread::spawn(|| {
            let original = thread_affinity().unwrap();
            let first = original.cores()[0];
            set_thread_affinity(&CpuSet::from_cores([first])).unwrap();
            assert_eq!(thread_affinity().unwrap().cores(), [first]);
            set_thread_affinity(&original).unwrap();
            assert_eq!(thread_affinity().unwrap().cores(), original.cores());
        })
        .join()
        .unwrap();
    }

    #[test]
    fn counts_kernel_drops_when_the_queue_overflows() {
        let rx = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )
        .unwrap();
        rx.set_recv_buffer_size(4_096).unwrap();
        rx.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        assert_eq!(socket_drops(rx.as_raw_fd()).unwrap(), 0);
        let to = rx.local_addr().unwrap().as_socket().unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        // A 4 KiB queue holds a handful of 1 KiB datagrams; the rest are dropped.
        for _ in 0..200 {
            tx.send_to(&[7; 1_000], to).unwrap();
        }
        let mut b = RecvBatch::new(64);
        let n = b.recv(rx.as_raw_fd()).unwrap();
        assert!(n > 0 && n < 200, "{n}");
        assert_eq!(
            b.recv(rx.as_raw_fd()).unwrap(),
            0,
            "the queue held fewer than 64"
        );
        let drops = socket_drops(rx.as_raw_fd()).unwrap();
        assert_eq!(
            u64::from(drops) + n as u64,
            200,
            "every datagram received or counted"
        );
    }
}
