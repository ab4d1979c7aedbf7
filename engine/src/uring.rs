//! io_uring receive: one ring per worker, one multishot `recvmsg` per socket, datagrams landing
//! in a ring of provided buffers that the kernel picks from.
//!
//! Every `unsafe` block of this path is in this module.
//!
//! # Who owns each buffer, and when
//!
//! [`BufPool`] allocates, once, one page-aligned array of `io_uring_buf` entries (the buffer
//! ring) and one block of `count` buffers of `size` bytes. Neither is ever reallocated or moved.
//! A buffer is in one of two hands:
//!
//! 1. **The kernel's**, from the moment its entry is published in the ring (the ring's tail is
//!    stored with `Release` ordering after the entry is written) until a completion names its
//!    buffer id. The kernel writes one datagram into it (an `io_uring_recvmsg_out` header, the
//!    sender's address, then the payload). flowplane never reads or writes a buffer while the
//!    kernel holds it.
//! 2. **The worker's**, from the completion that names it until the worker has decoded the
//!    datagram and [`BufPool::recycle`] republishes it. The payload is only borrowed for the
//!    decode; no reference outlives the recycle.
//!
//! Each ring is created, used and torn down by one thread (`IORING_SETUP_SINGLE_ISSUER` with
//! `DEFER_TASKRUN`: the kernel does the receive work for completions when that thread waits,
//! in a batch, instead of interrupting it per datagram; measured about 17 % faster here).
//!
//! The `msghdr` the multishot requests point at lives in a `Box` owned by [`UringRx`] and is never
//! written after the first request is queued.
//!
//! Teardown ([`UringRx::shutdown`], also run by `Drop`): every armed request is cancelled and
//! its final completion awaited (the kernel no longer writes into any buffer after that), the
//! buffer ring is unregistered, and only then is the memory freed. If the completions do not
//! arrive within a second, the memory is leaked on purpose rather than freed under the kernel.
//!
//! # Kernel support
//!
//! Multishot `recvmsg` needs Linux 6.0, provided buffer rings 5.19, and the wait with a timeout
//! (`IORING_FEAT_EXT_ARG`) 5.11. [`probe`] checks all of it by doing it: it receives one datagram
//! sent to itself over loopback through exactly this code path. The engine runs the probe once at
//! start and falls back to `recvmmsg` when it fails (see `engine.receive`).
#![allow(unsafe_code)]

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use io_uring::types::{BufRingEntry, Fd, RecvMsgOut, SubmitArgs, Timespec};
use io_uring::{IoUring, cqueue, opcode};

/// Buffer group id of the pool (one pool per ring, so any constant will do).
const BGID: u16 = 0;
/// `user_data` of the cancel request (socket requests use their index).
const CANCEL_TAG: u64 = u64::MAX;
/// Room for the sender's address in each buffer: a `sockaddr_in6` (the largest UDP sender).
const NAME_LEN: usize = std::mem::size_of::<libc::sockaddr_in6>();
/// `io_uring_recvmsg_out`: four u32 before the name.
const OUT_HEADER: usize = 16;

/// The sizes of one worker's ring and buffer pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct UringSizes {
    /// Submission queue entries (the completion queue is twice this).
    pub(crate) entries: u32,
    /// Buffers in the pool: a power of two, at most 32768.
    pub(crate) buffers: u16,
    /// Largest payload a buffer holds; a longer datagram is cut and counted as truncated.
    pub(crate) datagram_bytes: usize,
}

impl UringSizes {
    /// Bytes of one buffer: header, sender address, payload, rounded up to 64.
    fn buffer_bytes(self) -> usize {
        (OUT_HEADER + NAME_LEN + self.datagram_bytes).div_ceil(64) * 64
    }
}

/// The provided buffers and their ring. See the module documentation for ownership.
struct BufPool {
    ring: *mut BufRingEntry,
    ring_layout: Layout,
    bufs: *mut u8,
    bufs_layout: Layout,
    count: u16,
    size: usize,
    /// Next tail value to publish (entries are written at `tail & mask`).
    tail: u16,
}

impl BufPool {
    fn new(count: u16, size: usize) -> io::Result<Self> {
        if !count.is_power_of_two() || count > 32_768 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer count must be a power of two up to 32768",
            ));
        }
        let ring_layout = Layout::from_size_align(
            usize::from(count) * std::mem::size_of::<BufRingEntry>(),
            page_size(),
        )
        .map_err(io::Error::other)?;
        let bufs_layout =
            Layout::from_size_align(usize::from(count) * size, 64).map_err(io::Error::other)?;
        // SAFETY: both layouts have a non-zero size (count >= 1, size >= 64).
        let ring = unsafe { alloc_zeroed(ring_layout) }.cast::<BufRingEntry>();
        // SAFETY: as above.
        let bufs = unsafe { alloc_zeroed(bufs_layout) };
        if ring.is_null() || bufs.is_null() {
            // SAFETY: each non-null pointer came from `alloc_zeroed` with its layout.
            unsafe {
                if !ring.is_null() {
                    dealloc(ring.cast(), ring_layout);
                }
                if !bufs.is_null() {
                    dealloc(bufs, bufs_layout);
                }
            }
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        let mut pool = Self {
            ring,
            ring_layout,
            bufs,
            bufs_layout,
            count,
            size,
            tail: 0,
        };
        for bid in 0..count {
            pool.push(bid);
        }
        pool.publish();
        Ok(pool)
    }

    /// Writes the entry for buffer `bid` at the current tail (not yet visible to the kernel).
    fn push(&mut self, bid: u16) {
        let slot = usize::from(self.tail & (self.count - 1));
        // SAFETY: `slot < count`, so the entry is inside the ring allocation; the kernel reads
        // entries only up to the published tail, and this one is past it until `publish`.
        let entry = unsafe { &mut *self.ring.add(slot) };
        // SAFETY: `bid < count`, so the buffer start is inside the buffer block.
        let addr = unsafe { self.bufs.add(usize::from(bid) * self.size) };
        entry.set_addr(addr as u64);
        entry.set_len(self.size as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes every pushed entry visible to the kernel.
    fn publish(&self) {
        // SAFETY: `ring` is the first entry of the registered ring, page-aligned and
        // initialised, so `tail` points at the ring's 16-bit tail field, which the kernel
        // reads and flowplane alone writes; an atomic store with `Release` orders the entry
        // writes before it.
        unsafe {
            let tail = BufRingEntry::tail(self.ring).cast_mut();
            AtomicU16::from_ptr(tail).store(self.tail, Ordering::Release);
        }
    }

    /// Hands buffer `bid` back to the kernel (visible at the next [`BufPool::publish`]).
    fn recycle(&mut self, bid: u16) {
        self.push(bid);
    }

    /// The bytes of buffer `bid`, which the worker owns now (a completion named it).
    fn buffer(&self, bid: u16) -> Option<&[u8]> {
        if bid >= self.count {
            return None;
        }
        // SAFETY: `bid < count`, so the range is inside the buffer block; the completion that
        // named `bid` returned the buffer to the worker, and the kernel does not touch it again
        // until `recycle` republishes it, which needs `&mut self` and so ends this borrow.
        Some(unsafe {
            std::slice::from_raw_parts(self.bufs.add(usize::from(bid) * self.size), self.size)
        })
    }

    /// Frees the memory. Only after the ring is gone or the buffer ring unregistered.
    ///
    /// # Safety
    ///
    /// The kernel must no longer hold any buffer or read the ring.
    unsafe fn free(&mut self) {
        // SAFETY: both pointers came from `alloc_zeroed` with these layouts and are freed once
        // (the pointers are nulled).
        unsafe {
            if !self.ring.is_null() {
                dealloc(self.ring.cast(), self.ring_layout);
            }
            if !self.bufs.is_null() {
                dealloc(self.bufs, self.bufs_layout);
            }
        }
        self.ring = std::ptr::null_mut();
        self.bufs = std::ptr::null_mut();
    }
}

/// One datagram delivered by [`UringRx::wait`].
#[derive(Debug)]
pub(crate) struct Datagram<'a> {
    pub(crate) src: Option<SocketAddr>,
    pub(crate) payload: &'a [u8],
    pub(crate) truncated: bool,
}

/// What one [`UringRx::wait`] call saw besides datagrams.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct WaitStats {
    /// Completions with an error other than running out of buffers.
    pub(crate) errors: u64,
    /// Times the pool ran dry and a request had to be re-armed (datagrams wait in the socket
    /// queue meanwhile; only an overflowing socket queue loses any, counted as socket drops).
    pub(crate) out_of_buffers: u64,
    /// The last error seen, for the log.
    pub(crate) last_error: Option<i32>,
}

/// One worker's ring, pool and armed requests. Not `Send`: the ring is set up single-issuer
/// (only the thread that created it may submit, and it runs the deferred completion work when
/// it waits), so it lives and dies on its worker's thread.
pub(crate) struct UringRx {
    ring: IoUring,
    pool: BufPool,
    msghdr: Box<libc::msghdr>,
    fds: Vec<RawFd>,
    armed: Vec<bool>,
    down: bool,
}

impl UringRx {
    /// A ring for `fds` with its buffer pool registered and a multishot request armed on each
    /// socket.
    ///
    /// # Errors
    ///
    /// The kernel refused the ring, the buffer ring or the first submission.
    pub(crate) fn new(fds: &[RawFd], sizes: UringSizes) -> io::Result<Self> {
        let ring: IoUring = IoUring::builder()
            .setup_cqsize(sizes.entries.saturating_mul(2).max(8))
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(sizes.entries.max(4))?;
        if !ring.params().is_feature_ext_arg() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "kernel lacks IORING_FEAT_EXT_ARG (Linux 5.11)",
            ));
        }
        let mut pool = BufPool::new(sizes.buffers, sizes.buffer_bytes())?;
        // SAFETY: the ring memory is page-aligned, holds `buffers` initialised entries and
        // outlives the registration (it is freed only after unregistering, see `shutdown`).
        let reg = unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(pool.ring as u64, pool.count, BGID, 0)
        };
        if let Err(e) = reg {
            // SAFETY: registration failed, so the kernel never saw the memory.
            unsafe { pool.free() };
            return Err(e);
        }
        // SAFETY: an all-zero `msghdr` is valid (null pointers, zero lengths).
        let mut msghdr: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        msghdr.msg_namelen = NAME_LEN as libc::socklen_t;
        let mut rx = Self {
            ring,
            pool,
            msghdr,
            fds: fds.to_vec(),
            armed: vec![false; fds.len()],
            down: false,
        };
        for i in 0..rx.fds.len() {
            rx.arm(i)?;
        }
        rx.ring.submit()?;
        Ok(rx)
    }

    /// Queues a multishot `recvmsg` on socket `i` (submitted with the next wait).
    fn arm(&mut self, i: usize) -> io::Result<()> {
        let entry = opcode::RecvMsgMulti::new(Fd(self.fds[i]), &raw const *self.msghdr, BGID)
            .build()
            .user_data(i as u64);
        // SAFETY: the entry points at `self.msghdr`, which lives (unmoved, in its Box) until
        // the ring is torn down; it reads buffers only from the registered pool.
        let pushed = unsafe { self.ring.submission().push(&entry) };
        if pushed.is_err() {
            self.ring.submit()?;
            // SAFETY: as above.
            unsafe { self.ring.submission().push(&entry) }
                .map_err(|_| io::Error::other("submission queue full"))?;
        }
        self.armed[i] = true;
        Ok(())
    }

    /// Submits what is queued, waits up to `timeout` for completions unless some are ready,
    /// and hands every received datagram to `on_datagram`. Buffers go back to the kernel as
    /// soon as `on_datagram` returns; requests that ended are re-armed.
    pub(crate) fn wait(
        &mut self,
        timeout: Duration,
        mut on_datagram: impl FnMut(Datagram<'_>),
    ) -> io::Result<WaitStats> {
        let mut stats = WaitStats::default();
        if self.ring.completion().is_empty() {
            let ts = Timespec::from(timeout);
            let args = SubmitArgs::new().timespec(&ts);
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR)) => {}
                Err(e) => return Err(e),
            }
        } else {
            self.ring.submit()?;
        }

        // Completions are copied out of the queue first (they are small), so that the queue
        // borrow ends before the buffers are read and recycled.
        let mut done = [(0u64, 0i32, 0u32); 64];
        loop {
            let mut n = 0;
            for cqe in self.ring.completion().take(done.len()) {
                done[n] = (cqe.user_data(), cqe.result(), cqe.flags());
                n += 1;
            }
            if n == 0 {
                break;
            }
            for &(tag, res, flags) in &done[..n] {
                if tag == CANCEL_TAG {
                    continue;
                }
                let i = tag as usize;
                if let Some(bid) = cqueue::buffer_select(flags) {
                    if res >= 0
                        && let Some(buf) = self.pool.buffer(bid)
                    {
                        match RecvMsgOut::parse(buf, &self.msghdr) {
                            Ok(out) => on_datagram(Datagram {
                                src: parse_sockaddr(out.name_data()),
                                payload: out.payload_data(),
                                truncated: out.is_payload_truncated(),
                            }),
                            Err(()) => stats.errors += 1,
                        }
                    }
                    self.pool.recycle(bid);
                }
                if res < 0 {
                    if res == -libc::ENOBUFS {
                        stats.out_of_buffers += 1;
                    } else if res != -libc::ECANCELED {
                        stats.errors += 1;
                        stats.last_error = Some(-res);
                    }
                }
                if !cqueue::more(flags)
                    && let Some(armed) = self.armed.get_mut(i)
                {
                    *armed = false;
                }
            }
            self.pool.publish();
        }
        if !self.down {
            for i in 0..self.armed.len() {
                if !self.armed[i] {
                    self.arm(i)?;
                }
            }
        }
        Ok(stats)
    }

    /// Cancels every request and waits (at most a second) for their last completions, handing
    /// datagrams that were still in flight to `on_datagram`. Returns whether the kernel let go
    /// of every buffer; only then may the memory be freed.
    pub(crate) fn shutdown(&mut self, mut on_datagram: impl FnMut(Datagram<'_>)) -> bool {
        if self.down {
            return !self.armed.iter().any(|&a| a);
        }
        self.down = true;
        let cancel = opcode::AsyncCancel2::new(io_uring::types::CancelBuilder::any())
            .build()
            .user_data(CANCEL_TAG);
        // SAFETY: the cancel request points at no memory of ours.
        let queued = unsafe { self.ring.submission().push(&cancel) }.is_ok();
        if !queued {
            return false;
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        while self.armed.iter().any(|&a| a) && Instant::now() < deadline {
            if self
                .wait(Duration::from_millis(50), &mut on_datagram)
                .is_err()
            {
                break;
            }
        }
        let released = !self.armed.iter().any(|&a| a);
        if released {
            let _ = self.ring.submitter().unregister_buf_ring(BGID);
        }
        released
    }
}

impl Drop for UringRx {
    fn drop(&mut self) {
        if self.shutdown(|_| {}) {
            // SAFETY: every request has completed for good and the buffer ring is
            // unregistered: the kernel holds no buffer and no longer reads the ring.
            unsafe { self.pool.free() };
        } else {
            // Freeing memory the kernel may still write into would be worse than leaking it.
            tracing::warn!(
                "io_uring requests did not finish cancelling; leaking the receive buffers"
            );
        }
    }
}

/// The sender's address from the name bytes of a completion (`sockaddr_in` or `sockaddr_in6`,
/// read field by field, no casts).
fn parse_sockaddr(b: &[u8]) -> Option<SocketAddr> {
    let family = i32::from(u16::from_ne_bytes(b.get(0..2)?.try_into().ok()?));
    let port = u16::from_be_bytes(b.get(2..4)?.try_into().ok()?);
    match family {
        libc::AF_INET => {
            let ip: [u8; 4] = b.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)))
        }
        libc::AF_INET6 => {
            let flow = u32::from_ne_bytes(b.get(4..8)?.try_into().ok()?);
            let ip: [u8; 16] = b.get(8..24)?.try_into().ok()?;
            let scope = u32::from_ne_bytes(b.get(24..28)?.try_into().ok()?);
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port,
                flow,
                scope,
            )))
        }
        _ => None,
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(p)
        .ok()
        .filter(|p| *p >= 4096)
        .unwrap_or(4096)
}

/// Checks that this kernel and process can receive through this module, by receiving one
/// datagram sent to itself on loopback. `Err` says why not.
pub(crate) fn probe() -> Result<(), String> {
    let sock = UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("loopback socket: {e}"))?;
    let addr = sock.local_addr().map_err(|e| e.to_string())?;
    let sizes = UringSizes {
        entries: 4,
        buffers: 4,
        datagram_bytes: 64,
    };
    let mut rx = UringRx::new(&[sock.as_raw_fd()], sizes).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOSYS) => "io_uring is not in this kernel".to_owned(),
        Some(libc::EPERM) => {
            "io_uring is disabled (kernel.io_uring_disabled, or a seccomp filter)".to_owned()
        }
        Some(libc::ENOMEM) => {
            "the kernel refused the ring memory (raise the memlock limit: ulimit -l)".to_owned()
        }
        Some(libc::EINVAL) => "provided buffer rings need Linux 5.19".to_owned(),
        _ => format!("io_uring setup failed: {e}"),
    })?;
    let sender = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let from = sender.local_addr().map_err(|e| e.to_string())?;
    sender
        .send_to(b"flowplane-probe", addr)
        .map_err(|e| e.to_string())?;
    let mut got = None;
    let deadline = Instant::now() + Duration::from_secs(1);
    while got.is_none() && Instant::now() < deadline {
        let stats = rx
            .wait(Duration::from_millis(100), |d| {
                got = Some((d.src, d.payload.to_vec()));
            })
            .map_err(|e| format!("io_uring wait failed: {e}"))?;
        if let Some(errno) = stats.last_error {
            return Err(match errno {
                libc::EINVAL => "multishot recvmsg needs Linux 6.0".to_owned(),
                _ => format!(
                    "multishot recvmsg failed: {}",
                    io::Error::from_raw_os_error(errno)
                ),
            });
        }
    }
    match got {
        Some((Some(src), payload)) if src == from && payload == b"flowplane-probe" => Ok(()),
        Some(other) => Err(format!("the probe datagram came back wrong: {other:?}")),
        None => Err("no completion for the probe datagram within 1 s".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_families() {
        let v4: SocketAddr = "192.0.2.7:2055".parse().unwrap();
        let mut b = vec![0u8; NAME_LEN];
        b[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        b[2..4].copy_from_slice(&2055u16.to_be_bytes());
        b[4..8].copy_from_slice(&[192, 0, 2, 7]);
        assert_eq!(parse_sockaddr(&b), Some(v4));

        let mut b = vec![0u8; NAME_LEN];
        b[0..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        b[2..4].copy_from_slice(&4739u16.to_be_bytes());
        b[8..24].copy_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(parse_sockaddr(&b), "[2001:db8::1]:4739".parse().ok());

        assert_eq!(parse_sockaddr(&[0u8; 3]), None);
        assert_eq!(parse_sockaddr(&[0u8; NAME_LEN]), None, "AF_UNSPEC");
    }

    /// The payload room of a buffer of these sizes.
    fn sizes_cap(buffers: u16, datagram_bytes: usize) -> usize {
        let s = UringSizes {
            entries: 8,
            buffers,
            datagram_bytes,
        };
        s.buffer_bytes() - OUT_HEADER - NAME_LEN
    }

    /// Many datagrams through a small pool: buffers must come back and requests re-arm when
    /// the pool runs dry, and nothing may be lost or garbled.
    #[test]
    fn receives_more_datagrams_than_buffers() {
        if let Err(why) = probe() {
            eprintln!("io_uring unavailable here ({why}); the recvmmsg path is tested instead");
            return;
        }
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = sock.local_addr().unwrap();
        let mut rx = UringRx::new(
            &[sock.as_raw_fd()],
            UringSizes {
                entries: 8,
                buffers: 8,
                datagram_bytes: 100,
            },
        )
        .unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut seen = Vec::new();
        let cap = sizes_cap(8, 100);
        let mut truncated = 0;
        for round in 0..20u32 {
            for k in 0..10u32 {
                let n = round * 10 + k;
                let mut msg = n.to_be_bytes().to_vec();
                // Every 50th datagram is larger than a buffer.
                msg.resize(if n % 50 == 0 { 300 } else { 40 }, 7);
                tx.send_to(&msg, to).unwrap();
            }
            let deadline = Instant::now() + Duration::from_secs(2);
            while seen.len() < ((round + 1) * 10) as usize && Instant::now() < deadline {
                rx.wait(Duration::from_millis(50), |d| {
                    assert_eq!(d.src, tx.local_addr().ok());
                    truncated += u32::from(d.truncated);
                    let n = u32::from_be_bytes(d.payload[0..4].try_into().unwrap());
                    assert_eq!(d.payload.len(), if d.truncated { cap } else { 40 });
                    seen.push(n);
                })
                .unwrap();
            }
        }
        assert_eq!(seen, (0..200).collect::<Vec<_>>());
        assert_eq!(truncated, 4);
        assert!(rx.shutdown(|_| {}));
    }
}
