//! A UDP relay between an exporter and flowplane that keeps a copy of every datagram, so that a
//! test can decode what the exporter really sent with an independent decoder (tshark).
//!
//! The relay forwards each datagram unchanged, from one socket of its own (one stable exporter
//! address and port, as a real exporter has), in the order received.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

/// A running relay.
#[derive(Debug)]
pub struct Relay {
    /// Where the exporter should send.
    pub listen: SocketAddr,
    /// The address flowplane sees as the exporter.
    pub exporter: SocketAddr,
    stop: Arc<AtomicBool>,
    join: Option<JoinHandle<Vec<Vec<u8>>>>,
}

impl Relay {
    /// Starts a relay on 127.0.0.1 that forwards to `to`.
    ///
    /// # Errors
    ///
    /// A socket cannot be bound.
    pub fn start(to: SocketAddr) -> Result<Self> {
        let rx = UdpSocket::bind("127.0.0.1:0").context("bind relay")?;
        rx.set_read_timeout(Some(Duration::from_millis(50)))?;
        let tx = UdpSocket::bind("127.0.0.1:0").context("bind relay sender")?;
        let listen = rx.local_addr()?;
        let exporter = tx.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let join = std::thread::spawn(move || {
            let mut kept = Vec::new();
            let mut buf = vec![0u8; 65_535];
            loop {
                match rx.recv_from(&mut buf) {
                    Ok((n, _)) => {
                        // Loopback to a listening socket: a send error is a test failure
                        // that shows up as missing records.
                        let _ = tx.send_to(&buf[..n], to);
                        kept.push(buf[..n].to_vec());
                    }
                    Err(_) if s.load(Ordering::Relaxed) => break,
                    Err(_) => {}
                }
            }
            kept
        });
        Ok(Self {
            listen,
            exporter,
            stop,
            join: Some(join),
        })
    }

    /// Stops the relay once nothing has arrived for a moment; returns every datagram it
    /// forwarded, in order.
    pub fn finish(mut self) -> Vec<Vec<u8>> {
        self.stop.store(true, Ordering::Relaxed);
        self.join
            .take()
            .and_then(|j| j.join().ok())
            .unwrap_or_default()
    }
}
