//! Batched UDP send for tools that load a collector (`flowplane gen`): many datagrams per
//! system call, so that the generator costs far less CPU than the collector it measures.

use std::io;
use std::net::UdpSocket;
use std::os::fd::AsRawFd as _;

use crate::sys;

/// Most datagrams one [`send_batch`] call passes to the kernel.
pub const SEND_BATCH_MAX: usize = sys::SEND_BATCH_MAX;

/// Sends up to [`SEND_BATCH_MAX`] datagrams on a connected UDP socket with one `sendmmsg`.
/// Returns how many were sent (a prefix of `datagrams`; fewer than asked when the kernel took
/// fewer).
///
/// # Errors
///
/// The kernel sent nothing and said why, e.g. `ConnectionRefused` when the peer's port is closed
/// (reported on a send after the ICMP error arrived).
pub fn send_batch(socket: &UdpSocket, datagrams: &[&[u8]]) -> io::Result<usize> {
    sys::send_connected(socket.as_raw_fd(), datagrams)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_a_batch_in_order() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.connect(rx.local_addr().unwrap()).unwrap();
        let payloads: Vec<Vec<u8>> = (0..70u8).map(|i| vec![i; 1 + usize::from(i)]).collect();
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        let sent = send_batch(&tx, &refs).unwrap();
        assert_eq!(sent, SEND_BATCH_MAX, "one call sends at most a full batch");
        let mut buf = [0u8; 256];
        for p in payloads.iter().take(sent) {
            let n = rx.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], p.as_slice());
        }
        assert_eq!(send_batch(&tx, &[]).unwrap(), 0);
    }
}
