//! `flowplane replay`: sends the UDP payloads of a capture to a collector.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use flowplane::capture::{CaptureReader, Skipped};

#[derive(Debug, clap::Args)]
pub(crate) struct ReplayArgs {
    /// Capture whose UDP payloads are sent: pcap, pcapng, or a raw datagram dump.
    #[arg(value_name = "FILE")]
    file: PathBuf,

    /// Collector address, e.g. 127.0.0.1:2055 or collector.example.net:4739 (a name is
    /// resolved once, at start; the first address it resolves to is used).
    #[arg(long, value_name = "ADDR", value_parser = parse_to)]
    to: SocketAddr,

    /// Datagrams per second. Without it, datagrams go out as fast as the socket takes them.
    #[arg(long, value_name = "PPS", value_parser = parse_rate)]
    rate: Option<f64>,

    /// Send the capture this many times; 0 repeats until interrupted.
    #[arg(long = "loop", value_name = "N", default_value_t = 1)]
    loops: u64,

    /// Send each datagram from the UDP source port it had in the capture (one socket per port),
    /// so that a collector keying templates by exporter port sees the original exporters apart.
    /// Ports below 1024 need privileges.
    #[arg(long)]
    keep_source_port: bool,

    /// Sending threads, each with its own socket (its own source port, so a collector with
    /// several workers spreads them), each sending the whole capture; `--rate` is shared among
    /// them. With more than one sender, or with `--loop` other than 1, the capture is read into
    /// memory once (up to 256 MiB of payload), which makes replay a load generator.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    senders: u16,
}

/// Sends the capture and prints what was sent.
pub(crate) fn replay(args: &ReplayArgs) -> anyhow::Result<ExitCode> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("cannot install the signal handler")?;
    }

    if args.senders > 1 || args.loops != 1 {
        if args.keep_source_port {
            anyhow::bail!(
                "--keep-source-port replays one pass from one sender; drop --senders/--loop"
            );
        }
        return generate(args, &stop);
    }

    let mut sockets = Sockets::new(args.to, args.keep_source_port);
    let interval = args.rate.map(|r| Duration::from_secs_f64(1.0 / r));
    let started = Instant::now();
    let mut next_send = started;
    let mut sent = Totals::default();
    let mut skipped = Skipped::default();
    let mut pass = 0u64;

    'passes: while args.loops == 0 || pass < args.loops {
        pass += 1;
        let mut reader = CaptureReader::open(&args.file)?;
        for datagram in reader.by_ref() {
            let datagram = datagram?;
            if stop.load(Ordering::Relaxed) {
                break 'passes;
            }
            if let Some(interval) = interval {
                pace(&mut next_send, interval);
            }

            let socket = sockets.for_port(datagram.src.port())?;
            match socket.send_to(&datagram.payload, args.to) {
                Ok(_) => {
                    sent.datagrams += 1;
                    sent.bytes += datagram.payload.len() as u64;
                }
                // Nobody listening yet (ICMP port unreachable reported on the next send), or a
                // payload the network cannot carry: count, and go on.
                Err(_) => sent.failed += 1,
            }
        }
        skipped = reader.skipped();
        if pass == 1 && sent.datagrams == 0 && sent.failed == 0 {
            anyhow::bail!("{} holds no UDP datagrams to send", args.file.display());
        }
    }

    let secs = started.elapsed().as_secs_f64();
    println!(
        "replay: sent {} datagrams ({} bytes) to {} in {:.3} s ({:.0} datagrams/s), {} pass(es){}{}",
        sent.datagrams,
        sent.bytes,
        args.to,
        secs,
        if secs > 0.0 {
            sent.datagrams as f64 / secs
        } else {
            0.0
        },
        pass,
        if sent.failed > 0 {
            format!(", {} send errors", sent.failed)
        } else {
            String::new()
        },
        if skipped.total() > 0 {
            format!(
                ", {} non-UDP or fragment packets skipped per pass",
                skipped.total()
            )
        } else {
            String::new()
        },
    );
    Ok(if sent.failed > 0 && sent.datagrams == 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The load-generator mode: the capture in memory, `senders` threads looping over it.
fn generate(args: &ReplayArgs, stop: &Arc<AtomicBool>) -> anyhow::Result<ExitCode> {
    let mut payloads: Vec<Vec<u8>> = Vec::new();
    let mut held = 0usize;
    let mut reader = CaptureReader::open(&args.file)?;
    for datagram in reader.by_ref() {
        let datagram = datagram?;
        held += datagram.payload.len();
        if held > MAX_IN_MEMORY {
            anyhow::bail!(
                "{} holds more than {} MiB of payload: too much to loop in memory; replay it \
                 with --loop 1 and one sender",
                args.file.display(),
                MAX_IN_MEMORY >> 20
            );
        }
        payloads.push(datagram.payload);
    }
    if payloads.is_empty() {
        anyhow::bail!("{} holds no UDP datagrams to send", args.file.display());
    }
    let skipped = reader.skipped();
    let payloads = Arc::new(payloads);
    let senders = usize::from(args.senders);
    let interval = args
        .rate
        .map(|r| Duration::from_secs_f64(senders as f64 / r));
    let started = Instant::now();
    let mut threads = Vec::with_capacity(senders);
    for _ in 0..senders {
        let socket = Sockets::new(args.to, false)
            .for_port(0)?
            .try_clone()
            .context("cannot clone the sending socket")?;
        let payloads = Arc::clone(&payloads);
        let stop = Arc::clone(stop);
        let (to, loops) = (args.to, args.loops);
        threads.push(thread::spawn(move || {
            let mut t = Totals::default();
            let mut next_send = Instant::now();
            let mut pass = 0u64;
            'passes: while loops == 0 || pass < loops {
                pass += 1;
                for p in payloads.iter() {
                    if stop.load(Ordering::Relaxed) {
                        break 'passes;
                    }
                    if let Some(interval) = interval {
                        pace(&mut next_send, interval);
                    }
                    match socket.send_to(p, to) {
                        Ok(_) => {
                            t.datagrams += 1;
                            t.bytes += p.len() as u64;
                        }
                        Err(_) => t.failed += 1,
                    }
                }
            }
            (t, pass)
        }));
    }
    let mut sent = Totals::default();
    let mut passes = 0;
    for th in threads {
        let (t, pass) = th
            .join()
            .map_err(|_| anyhow::anyhow!("a sender thread panicked"))?;
        sent.datagrams += t.datagrams;
        sent.bytes += t.bytes;
        sent.failed += t.failed;
        passes += pass;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "replay: sent {} datagrams ({} bytes) to {} in {:.3} s ({:.0} datagrams/s) from {} \
         sender(s), {} pass(es){}{}",
        sent.datagrams,
        sent.bytes,
        args.to,
        secs,
        if secs > 0.0 {
            sent.datagrams as f64 / secs
        } else {
            0.0
        },
        senders,
        passes,
        if sent.failed > 0 {
            format!(", {} send errors", sent.failed)
        } else {
            String::new()
        },
        if skipped.total() > 0 {
            format!(", {} non-UDP or fragment packets skipped", skipped.total())
        } else {
            String::new()
        },
    );
    Ok(if sent.failed > 0 && sent.datagrams == 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Payload bytes the load-generator mode keeps in memory at most.
const MAX_IN_MEMORY: usize = 256 << 20;

#[derive(Default)]
struct Totals {
    datagrams: u64,
    bytes: u64,
    failed: u64,
}

/// Sleeps until the next slot of a fixed-rate schedule. When sending falls behind, the schedule
/// is not allowed to build up a burst larger than one second's worth.
fn pace(next_send: &mut Instant, interval: Duration) {
    let now = Instant::now();
    if *next_send > now {
        thread::sleep(*next_send - now);
    } else if now.duration_since(*next_send) > Duration::from_secs(1) {
        *next_send = now;
    }
    *next_send += interval;
}

/// The sending sockets: one ephemeral, or one per original source port.
struct Sockets {
    bind_ip: IpAddr,
    keep_source_port: bool,
    shared: Option<UdpSocket>,
    by_port: HashMap<u16, UdpSocket>,
}

impl Sockets {
    fn new(to: SocketAddr, keep_source_port: bool) -> Self {
        let bind_ip = match to {
            SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        Self {
            bind_ip,
            keep_source_port,
            shared: None,
            by_port: HashMap::new(),
        }
    }

    fn for_port(&mut self, port: u16) -> anyhow::Result<&UdpSocket> {
        if !self.keep_source_port {
            if self.shared.is_none() {
                self.shared = Some(bind(SocketAddr::new(self.bind_ip, 0))?);
            }
            return self.shared.as_ref().context("socket vanished");
        }
        if !self.by_port.contains_key(&port) {
            if self.by_port.len() >= MAX_SOURCE_PORTS {
                anyhow::bail!(
                    "the capture uses more than {MAX_SOURCE_PORTS} source ports; \
                     replay it without --keep-source-port"
                );
            }
            let socket = bind(SocketAddr::new(self.bind_ip, port))?;
            self.by_port.insert(port, socket);
        }
        self.by_port.get(&port).context("socket vanished")
    }
}

fn bind(addr: SocketAddr) -> anyhow::Result<UdpSocket> {
    UdpSocket::bind(addr).map_err(|e: io::Error| anyhow::anyhow!("cannot bind UDP {addr}: {e}"))
}

pub(crate) fn parse_to(s: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs as _;
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    match s.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("`{s}` resolves to no address")),
        Err(e) => Err(format!("`{s}` is not HOST:PORT or cannot be resolved: {e}")),
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if !(rate.is_finite() && rate > 0.0 && rate <= 10_000_000.0) {
        return Err(format!(
            "{s} is outside 0 (exclusive) to 10000000 datagrams/s"
        ));
    }
    Ok(rate)
}

/// More distinct exporters than this in one capture is not what `--keep-source-port` is for.
const MAX_SOURCE_PORTS: usize = 1_024;
