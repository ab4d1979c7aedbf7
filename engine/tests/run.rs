//! The whole engine over real UDP sockets on loopback: listeners, workers, merger, sink driver.
//! The sink here only collects batches in memory; the tests crate drives the real Valkey and
//! Kafka sinks end to end.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use flowplane_engine::{EngineConfig, ReceiveBackend, Sink, SinkError, WindowBatch};

struct Collect(Arc<Mutex<Vec<WindowBatch>>>);

impl Sink for Collect {
    fn name(&self) -> &'static str {
        "collect"
    }
    fn send(&mut self, batch: &WindowBatch) -> Result<(), SinkError> {
        self.0.lock().unwrap().push(batch.clone());
        Ok(())
    }
}

/// A NetFlow v5 datagram of `n` records, each `bytes` octets and 1 packet, from 10.0.0.`i`.
fn v5(n: u8, bytes: u32) -> Vec<u8> {
    let mut d = vec![0u8; 24];
    d[0..2].copy_from_slice(&5u16.to_be_bytes());
    d[2..4].copy_from_slice(&u16::from(n).to_be_bytes());
    d[8..12].copy_from_slice(&1_700_000_000u32.to_be_bytes());
    for i in 0..n {
        let mut r = [0u8; 48];
        r[0..4].copy_from_slice(&[10, 0, 0, i]);
        r[4..8].copy_from_slice(&[10, 0, 1, 1]);
        r[16..20].copy_from_slice(&1u32.to_be_bytes());
        r[20..24].copy_from_slice(&bytes.to_be_bytes());
        r[34..36].copy_from_slice(&443u16.to_be_bytes());
        r[38] = 6;
        d.extend_from_slice(&r);
    }
    d
}

#[test]
fn every_record_sent_reaches_the_sink_through_io_uring() {
    let run =
        every_record_sent_reaches_the_sink_and_shutdown_flushes(ReceiveBackend::IoUring, |_| {});
    assert_eq!(run.receive, ReceiveBackend::IoUring);
}

#[test]
fn every_record_sent_reaches_the_sink_through_recvmmsg() {
    let run =
        every_record_sent_reaches_the_sink_and_shutdown_flushes(ReceiveBackend::Recvmmsg, |_| {});
    assert_eq!(run.receive, ReceiveBackend::Recvmmsg);
}

/// `auto` takes io_uring on the kernels this project runs on (Linux 6.x); a kernel without it
/// would take recvmmsg and say why in the log.
#[test]
fn auto_prefers_io_uring() {
    let run = every_record_sent_reaches_the_sink_and_shutdown_flushes(ReceiveBackend::Auto, |_| {});
    assert_eq!(run.receive, ReceiveBackend::IoUring);
}

/// Two merger shards: the parts of each window are joined, and every record still arrives.
#[test]
fn every_record_sent_reaches_the_sink_through_two_merger_shards() {
    let run = every_record_sent_reaches_the_sink_and_shutdown_flushes(ReceiveBackend::Auto, |c| {
        c.merger_shards = 2;
    });
    assert_eq!(run.receive, ReceiveBackend::IoUring);
}

/// This machine has two cores: the worker gets core 1, everything else core 0. While the engine
/// runs, the calling thread (and so every thread it starts) is kept off the worker core; its
/// own mask is back when `run` returns.
#[test]
fn pinned_threads_keep_off_the_worker_core_and_the_callers_mask_is_restored() {
    let all = core_ids();
    if all.len() < 2 {
        eprintln!("skipped: needs two cores, the process has {all:?}");
        return;
    }
    let (worker, other) = (all[1], all[0]);
    let run = every_record_sent_reaches_the_sink_and_shutdown_flushes(ReceiveBackend::Auto, |c| {
        c.pin_cores = true;
        c.workers = 1;
        c.worker_cores = vec![worker];
        c.merger_cores = vec![other];
        c.sink_cores = vec![other];
    });
    assert_eq!(run.mask_while_running, [other]);
    assert_eq!(run.mask_before, all);
    assert_eq!(run.mask_after, all, "restored");
}

/// A core that is not available is refused, naming the setting, and the mask is untouched.
#[test]
fn refuses_a_merger_or_sink_core_that_is_not_available() {
    for setting in ["merger_cores", "sink_cores"] {
        let mut cfg = EngineConfig {
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            workers: 1,
            pin_cores: true,
            ..EngineConfig::default()
        };
        let missing = vec![4_000];
        match setting {
            "merger_cores" => cfg.merger_cores = missing,
            _ => cfg.sink_cores = missing,
        }
        let before = core_ids();
        let e = flowplane_engine::run(&cfg, Vec::new(), Arc::new(AtomicBool::new(true)))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!(
                "invalid setting `engine.{setting}`: core 4000 is not available"
            )),
            "{e}"
        );
        assert_eq!(core_ids(), before);
    }
}

/// The calling thread's CPU mask, as core numbers.
fn core_ids() -> Vec<usize> {
    core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect()
}

struct Run {
    receive: ReceiveBackend,
    mask_before: Vec<usize>,
    mask_while_running: Vec<usize>,
    mask_after: Vec<usize>,
}

fn every_record_sent_reaches_the_sink_and_shutdown_flushes(
    receive: ReceiveBackend,
    tweak: impl FnOnce(&mut EngineConfig),
) -> Run {
    let got = Arc::new(Mutex::new(Vec::new()));
    let mut cfg = EngineConfig {
        receive,
        listen: vec!["127.0.0.1:0".parse().unwrap(), "[::1]:0".parse().unwrap()],
        workers: 2,
        pin_cores: false,
        dimensions: vec!["src_ip".into(), "dst_port+protocol".into()],
        table_capacity: 1_024,
        ..EngineConfig::default()
    };
    tweak(&mut cfg);
    let shutdown = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel::<(Vec<SocketAddr>, Vec<usize>)>();
    let sinks: Vec<Box<dyn Sink>> = vec![Box::new(Collect(Arc::clone(&got)))];
    let sd = Arc::clone(&shutdown);
    let engine = std::thread::spawn(move || {
        let before = core_ids();
        let report = flowplane_engine::run_with(&cfg, sinks, sd, |b| {
            ready_tx.send((b.to_vec(), core_ids())).unwrap();
        });
        (before, report, core_ids())
    });
    let (bound, mask_while_running) = ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(bound.len(), 2);

    // Several exporters (source ports) on both listeners, so both workers get traffic.
    let mut sent_bytes = 0u64;
    let mut sent_records = 0u64;
    for e in 0..8 {
        let to = bound[e % 2];
        let local = if to.is_ipv4() {
            "127.0.0.1:0"
        } else {
            "[::1]:0"
        };
        let s = UdpSocket::bind(local).unwrap();
        for _ in 0..50 {
            s.send_to(&v5(30, 100), to).unwrap();
            sent_bytes += 30 * 100;
            sent_records += 30;
        }
    }
    // Let the workers read, then stop: the open window must be flushed.
    std::thread::sleep(Duration::from_millis(300));
    shutdown.store(true, Ordering::Relaxed);
    let (mask_before, report, mask_after) = engine.join().unwrap();
    let report = report.unwrap();

    let c = &report.counters;
    assert_eq!(
        c.workers.records + c.workers.socket_drops * 30,
        sent_records,
        "{c:?}"
    );
    assert_eq!(
        c.workers.socket_drops, 0,
        "loopback at this rate drops nothing"
    );
    assert_eq!(c.decode_errors_total(), 0);
    assert_eq!(c.sinks.len(), 1);
    assert_eq!(c.sinks[0].windows_dropped, 0);
    assert_eq!(c.sinks[0].windows_sent, c.windows_closed);

    let batches = got.lock().unwrap();
    let mut by_src = 0u64;
    let mut by_port = 0u64;
    for b in batches.iter() {
        by_src += b.dimensions[0]
            .entries
            .iter()
            .map(|e| e.totals.bytes)
            .sum::<u64>();
        let p = &b.dimensions[1];
        assert!(p.entries.iter().all(|e| e.key == "443|6"));
        by_port += p.entries.iter().map(|e| e.totals.bytes).sum::<u64>();
    }
    assert_eq!(by_src, sent_bytes);
    assert_eq!(by_port, sent_bytes);
    Run {
        receive: report.receive,
        mask_before,
        mask_while_running,
        mask_after,
    }
}

#[test]
fn refuses_bad_configuration_and_busy_ports() {
    let holder = UdpSocket::bind("127.0.0.1:0").unwrap();
    let cfg = EngineConfig {
        listen: vec![holder.local_addr().unwrap()],
        workers: 1,
        pin_cores: false,
        ..EngineConfig::default()
    };
    let e = flowplane_engine::run(&cfg, Vec::new(), Arc::new(AtomicBool::new(true))).unwrap_err();
    assert!(
        e.to_string().starts_with("cannot listen on 127.0.0.1:"),
        "{e}"
    );

    let cfg = EngineConfig {
        table_capacity: 1000,
        ..EngineConfig::default()
    };
    let e = flowplane_engine::run(&cfg, Vec::new(), Arc::new(AtomicBool::new(true))).unwrap_err();
    assert!(e.to_string().contains("engine.table_capacity"), "{e}");
}
