//! The corpus test: every NetFlow v5, v9 and IPFIX capture in `../shared/corpus` goes through
//! flowplane's decoders and through tshark, and every record's key fields must agree.
//!
//! * One [`Decoder`] per file; files listed in `decode_after` are decoded first by the same
//!   decoder, and for tshark their datagrams are written before the target's into one pcap so
//!   that its template cache sees them too. Only the target's datagrams are compared.
//! * Per datagram: the number of flow records (options data is not a flow record), then per
//!   record, in order: addresses, ports, protocol, TCP flags, ToS, interfaces, octets, packets,
//!   AS numbers, start and end time, sampling rate, observation domain and exporter.
//! * tshark 4.0 is wrong in a few known places. Where flowplane follows RFC 3954 / RFC 7011 and
//!   tshark does not, [`EXCEPTIONS`] names the file, the frame, the set and what differs; each
//!   exception is checked to hold exactly as described (and to be used), so it cannot hide
//!   anything else.
//! * Malformed files (MANIFEST "MALFORMED") must give counted errors and no panic.
//!
//! The test fails when tshark or the corpus is missing, unless `FLOWPLANE_SKIP_CORPUS=1`.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use flowplane::capture::{Container, Datagram, read_capture};
use flowplane_decoders::{
    DatagramResult, DecodeError, Decoder, DecoderLimits, FlowRecord, addr_to_bytes,
};
use flowplane_tests::tshark::{self, Export, Frame, Record, parse_abs_time_ms, parse_secs_ms};
use flowplane_tests::{corpus, env, pcap_out};

// ---------------------------------------------------------------------------------------------
// Exceptions: where tshark 4.0 departs from the RFCs and flowplane does not.

/// What differs between tshark and flowplane in one datagram, and how the test checks it.
#[derive(Clone, Copy, Debug)]
enum Diff {
    /// tshark stops at the v9 header's count (RFC 3954 § 5.1 calls it the number of records,
    /// and exporters miscount) while FlowSets follow; flowplane reads the datagram to its end
    /// and yields `count` more records after tshark's. Checked: tshark's records match ours
    /// one for one, ours has exactly `count` more, and the datagram is longer than what tshark
    /// dissected.
    V9AfterHeaderCount { count: usize },
    /// Data set `set` arrived before its template (earlier in this datagram or in an earlier
    /// one); tshark cannot decode it, flowplane holds it and decodes it when this datagram
    /// defines the template (RFC 7011 § 8 allows a collector to keep such data; docs/decoders.md
    /// "Data before its template"). Checked: tshark marks a set `set` as "no template" in this
    /// or an earlier datagram, this datagram defines template `set`, and ours has exactly
    /// `count` more records, emitted where the template set is; those are dropped.
    HeldUntilTemplate { set: u16, count: usize },
}

/// One exception: file, 1-based index of the datagram among the file's flow datagrams, the
/// difference, and why flowplane is right.
struct Exception {
    file: &'static str,
    frame: usize,
    diff: Diff,
    reason: &'static str,
}

/// Every known disagreement with tshark. Each one must occur exactly as described.
const EXCEPTIONS: &[Exception] = &[
    Exception {
        file: "akvorado/data+templates.pcap",
        frame: 1,
        diff: Diff::HeldUntilTemplate {
            set: 257,
            count: 11,
        },
        reason: "the datagram's first FlowSet is data for 257, defined three FlowSets later; \
                 tshark decodes in one pass, flowplane holds the 664-byte set and decodes its \
                 11 records (60 bytes each) when template 257 arrives",
    },
    Exception {
        file: "akvorado/ethernet-over-mpls-with-control-word.pcap",
        frame: 2,
        diff: Diff::HeldUntilTemplate {
            set: 384,
            count: 10,
        },
        reason: "frame 1 is data for 384, frame 2 its template; flowplane holds frame 1's set \
                 and emits its 10 records when frame 2 defines 384, tshark never decodes them",
    },
    Exception {
        file: "logstash-codec-netflow/netflow9_test_invalid01.dat",
        frame: 1,
        diff: Diff::V9AfterHeaderCount { count: 2 },
        reason: "softflowd's header count (2) covers only the two templates; tshark stops \
                 there, flowplane reads the options template and data FlowSets that follow",
    },
];

// ---------------------------------------------------------------------------------------------
// Entry points.

#[test]
fn corpus_matches_tshark() {
    let Some(dir) = corpus::dir_or_skip("corpus") else {
        return;
    };
    let entries = corpus::read_index(&dir).expect("read the corpus index");
    let mut totals: HashMap<&'static str, (usize, usize)> = HashMap::new();
    let mut failures = Vec::new();
    let mut used = vec![false; EXCEPTIONS.len()];
    let mut skipped = Vec::new();

    for e in entries.iter().filter(|e| e.is_netflow_or_ipfix()) {
        if e.malformed {
            continue; // malformed_files_count_errors
        }
        match compare_file(&dir, e, &mut used) {
            Ok(sum) => {
                eprintln!(
                    "corpus: {:<75} {:>5} datagrams {:>6} records compared, {} exception(s)",
                    e.path, sum.datagrams, sum.records, sum.exceptions
                );
                if sum.datagrams == 0 {
                    skipped.push(format!("{}: no NetFlow/IPFIX datagram", e.path));
                }
                let t = totals.entry(proto_label(&e.protocol)).or_default();
                t.0 += 1;
                t.1 += sum.records;
            }
            Err(msg) => {
                eprintln!("corpus: {:<75} FAILED", e.path);
                failures.push(msg);
            }
        }
    }
    for (i, ex) in EXCEPTIONS.iter().enumerate() {
        if !used[i] {
            failures.push(format!(
                "{} frame {}: exception {:?} was not needed (stale exception)",
                ex.file, ex.frame, ex.diff
            ));
        }
    }
    let mut labels: Vec<_> = totals.into_iter().collect();
    labels.sort();
    let total_records: usize = labels.iter().map(|(_, (_, r))| r).sum();
    for (label, (files, records)) in &labels {
        eprintln!("corpus: {label}: {files} files, {records} records compared");
    }
    eprintln!(
        "corpus: total {} records compared, {} exceptions, {} failing files",
        total_records,
        EXCEPTIONS.len(),
        failures.len()
    );
    assert!(total_records > 0, "no record compared at all");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn malformed_files_count_errors() {
    let Some(dir) = corpus::dir_or_skip("corpus") else {
        return;
    };
    let entries = corpus::read_index(&dir).expect("read the corpus index");
    let mut seen = 0;
    for e in entries
        .iter()
        .filter(|e| e.malformed && e.is_netflow_or_ipfix())
    {
        seen += 1;
        let path = corpus::file(&dir, &e.path);
        let datagrams = match read_capture(&path) {
            Ok(c) => c.datagrams,
            Err(err) => panic!("{}: capture not readable: {err}", e.path),
        };
        let mut dec = Decoder::new(DecoderLimits::default());
        let mut errors = 0u64;
        let mut kinds = BTreeSet::new();
        for d in &datagrams {
            let r = dec.decode(d.src, d.ts_ms, &d.payload, |_| {});
            if let Some(err) = r.error {
                errors += 1;
                kinds.insert(err.reason());
            }
        }
        let stats = dec.stats();
        let counted: u64 = stats.errors.iter().sum();
        eprintln!(
            "corpus: {:<75} MALFORMED: {} datagrams, {} errors {:?}, {} records",
            e.path,
            datagrams.len(),
            errors,
            kinds,
            stats.records
        );
        assert!(
            errors > 0,
            "{}: malformed file decoded without error",
            e.path
        );
        assert_eq!(
            counted, errors,
            "{}: DecodeStats errors differ from the per-datagram errors",
            e.path
        );
        assert_eq!(stats.datagrams, datagrams.len() as u64);
    }
    assert!(
        seen > 0,
        "the MANIFEST lists no malformed NetFlow/IPFIX file"
    );
}

/// The comparator must report a difference: decode a real file, flip one field of one record,
/// and check the report names the file, frame, record, field and both values.
#[test]
fn comparator_reports_a_flipped_field() {
    let Some(dir) = corpus::dir_or_skip("corpus") else {
        return;
    };
    let entries = corpus::read_index(&dir).expect("read the corpus index");
    for (path, field) in [
        ("akvorado/nfv5.pcap", Flip::Bytes),
        ("akvorado/data.pcap", Flip::DstPort),
        ("logstash-codec-netflow/ipfix.dat", Flip::SrcAddr),
    ] {
        let e = entries
            .iter()
            .find(|e| e.path == path)
            .unwrap_or_else(|| panic!("{path} not in INDEX.tsv"));
        let mut run = prepare(&dir, e).expect("prepare");
        let (di, ri) = run
            .ours
            .iter()
            .enumerate()
            .find_map(|(i, d)| (!d.records.is_empty()).then_some((i, 0)))
            .expect("some record");
        let rec = &mut run.ours[di].records[ri];
        match field {
            Flip::Bytes => rec.bytes ^= 1,
            Flip::DstPort => rec.dst_port ^= 0x100,
            Flip::SrcAddr => rec.src_addr[15] ^= 1,
        }
        let mut used = vec![false; EXCEPTIONS.len()];
        let err = compare(&run, e, &mut used).expect_err("a flipped field must be reported");
        let want = match field {
            Flip::Bytes => "bytes",
            Flip::DstPort => "dst_port",
            Flip::SrcAddr => "src_addr",
        };
        assert!(
            err.contains(path) && err.contains(&format!("record {ri}")) && err.contains(want),
            "report does not name the flipped field: {err}"
        );

        // A missing record is reported as a count mismatch.
        let mut run = prepare(&dir, e).expect("prepare");
        run.ours[di].records.pop();
        let err = compare(&run, e, &mut used).expect_err("a lost record must be reported");
        assert!(err.contains("record count"), "{err}");
    }
}

#[derive(Clone, Copy)]
enum Flip {
    Bytes,
    DstPort,
    SrcAddr,
}

// ---------------------------------------------------------------------------------------------
// Environment.

fn proto_label(p: &str) -> &'static str {
    if p.contains("file format") {
        "IPFIX file"
    } else if p.contains("IPFIX") {
        "IPFIX"
    } else if p.contains("v9") {
        "NetFlow v9"
    } else {
        "NetFlow v5"
    }
}

// ---------------------------------------------------------------------------------------------
// Running both sides.

/// One flow datagram decoded by flowplane.
struct Ours {
    datagram: Datagram,
    result: DatagramResult,
    records: Vec<FlowRecord>,
}

/// Both sides of one file, before comparison.
struct Run {
    /// The target file's flow datagrams (priming ones are decoded but not kept).
    ours: Vec<Ours>,
    /// tshark's frames holding a flow export, priming frames first.
    frames: Vec<Frame>,
    /// Flow datagrams that came from priming files (the first `primed` of `frames`).
    primed: usize,
    /// Datagrams of every file, in tshark order, for the sampling state.
    all_src: Vec<SocketAddr>,
}

#[derive(Debug)]
struct Summary {
    datagrams: usize,
    records: usize,
    exceptions: usize,
}

fn is_flow(d: &Datagram) -> bool {
    matches!(d.payload.get(..2), Some([0, 5 | 9 | 10]))
}

fn read_flow_datagrams(dir: &Path, rel: &str) -> Result<(Container, Vec<Datagram>), String> {
    let c = read_capture(corpus::file(dir, rel)).map_err(|e| format!("{rel}: read: {e}"))?;
    let flows = c.datagrams.into_iter().filter(is_flow).collect();
    Ok((c.container, flows))
}

fn prepare(dir: &Path, e: &corpus::Entry) -> Result<Run, String> {
    let mut priming = Vec::new();
    for p in &e.decode_after {
        priming.extend(read_flow_datagrams(dir, p)?.1);
    }
    let (container, target) = read_flow_datagrams(dir, &e.path)?;

    // tshark input: the original capture when it needs no priming and has framing; otherwise
    // priming and target datagrams re-framed into one pcap.
    let ports: BTreeSet<u16> = priming
        .iter()
        .chain(&target)
        .map(|d| d.dst.port())
        .collect();
    let ports: Vec<u16> = ports.into_iter().collect();
    let frames = if e.decode_after.is_empty() && container != Container::RawDump {
        tshark::dissect(&corpus::file(dir, &e.path), &ports)
    } else {
        // One directory per file and caller: the tests of this binary run in parallel.
        let name = format!(
            "corpus-{}-{:?}",
            e.path.replace('/', "_"),
            std::thread::current().id()
        )
        .replace(['(', ')'], "");
        let scratch = env::scratch_dir(&name).map_err(|x| x.to_string())?;
        let pcap = scratch.join(e.path.replace('/', "_") + ".pcap");
        let out = priming.iter().chain(&target).map(|d| pcap_out::UdpOut {
            ts_ms: d.ts_ms,
            src: d.src,
            dst: d.dst,
            payload: &d.payload,
        });
        pcap_out::write_udp_pcap(&pcap, out).map_err(|x| format!("{}: {x:#}", e.path))?;
        let r = tshark::dissect(&pcap, &ports);
        let _ = std::fs::remove_dir_all(&scratch);
        r
    }
    .map_err(|x| format!("{}: tshark: {x:#}", e.path))?;
    let frames: Vec<Frame> = frames.into_iter().filter(|f| f.export.is_some()).collect();
    if frames.len() != priming.len() + target.len() {
        return Err(format!(
            "{}: tshark found {} flow exports, flowplane's capture reader {} datagrams",
            e.path,
            frames.len(),
            priming.len() + target.len()
        ));
    }

    let mut dec = Decoder::new(DecoderLimits::default());
    let all_src = priming.iter().chain(&target).map(|d| d.src).collect();
    for d in &priming {
        dec.decode(d.src, d.ts_ms, &d.payload, |_| {});
    }
    let mut ours = Vec::new();
    for d in target {
        let mut records = Vec::new();
        let result = dec.decode(d.src, d.ts_ms, &d.payload, |r| records.push(*r));
        ours.push(Ours {
            datagram: d,
            result,
            records,
        });
    }
    Ok(Run {
        ours,
        frames,
        primed: priming.len(),
        all_src,
    })
}

fn compare_file(dir: &Path, e: &corpus::Entry, used: &mut [bool]) -> Result<Summary, String> {
    let run = prepare(dir, e)?;
    compare(&run, e, used)
}

// ---------------------------------------------------------------------------------------------
// What tshark says flowplane should produce.

/// Option-announced state of one (exporter, version, domain), built from tshark's decoding of
/// options data records.
#[derive(Default)]
struct OptionsState {
    options_templates: BTreeSet<u16>,
    scope_rate: Option<u32>,
    samplers: HashMap<(u8, u64), u32>,
    sys_init_ms: Option<u64>,
}

/// The 1-in-N rate a record announces itself, by the precedence docs/decoders.md gives.
fn record_rate(r: &Record) -> Option<u32> {
    let nz = |names: &[&str]| r.num(names).filter(|v| *v > 0);
    let rate = if let Some(n) = nz(&["cflow.sampling_interval"]) {
        n
    } else if let Some(n) = nz(&["cflow.sampler_random_interval"]) {
        n
    } else if let (Some(size), Some(pop)) = (
        nz(&["cflow.sampling_size"]),
        nz(&["cflow.sampling_population"]),
    ) {
        (pop + size / 2) / size
    } else if let Some(i) = nz(&["cflow.sampling_packet_interval"]) {
        let space = r.num(&["cflow.sampling_packet_space"]).unwrap_or(0);
        (i + space + i / 2) / i
    } else {
        return None;
    };
    Some(u32::try_from(rate).unwrap_or(u32::MAX).max(1))
}

fn sampler_of(r: &Record) -> Option<(u8, u64)> {
    if let Some(id) = r.num(&["cflow.sampler_id"]) {
        Some((0, id))
    } else {
        r.num(&["cflow.selector_id"]).map(|id| (1, id))
    }
}

/// One record as tshark decoded it, turned into the values flowplane must produce. `None`
/// marks a value the oracle cannot give.
struct Expected {
    src_addr: [u8; 16],
    dst_addr: [u8; 16],
    src_port: u64,
    dst_port: u64,
    protocol: u64,
    tcp_flags: u64,
    tos: u64,
    input_if: u64,
    output_if: u64,
    bytes: u64,
    packets: u64,
    src_as: u64,
    dst_as: u64,
    start_ms: Option<u64>,
    end_ms: Option<u64>,
    sampling_rate: u32,
    domain_id: u64,
    exporter: [u8; 16],
}

/// The export header's time base, from tshark's header fields.
struct HeaderTime {
    export_ms: u64,
    sys_uptime_ms: Option<u64>,
}

fn header_time(x: &Export) -> HeaderTime {
    let secs = x
        .header
        .num(&["cflow.unix_secs", "cflow.exporttime"])
        .or(x.unix_secs)
        .unwrap_or(0);
    let nsecs = if x.version == 5 {
        x.header.num(&["cflow.unix_nsecs"]).unwrap_or(0)
    } else {
        0
    };
    HeaderTime {
        export_ms: secs * 1_000 + nsecs / 1_000_000,
        sys_uptime_ms: x.sys_uptime_ms,
    }
}

fn expected(
    r: &Record,
    x: &Export,
    src: SocketAddr,
    opts: &OptionsState,
    time: &HeaderTime,
) -> Expected {
    let n = |names: &[&str]| r.num(names).unwrap_or(0);
    let (v4s, v4d) = (r.addr("cflow.srcaddr"), r.addr("cflow.dstaddr"));
    let (v6s, v6d) = (r.addr("cflow.srcaddrv6"), r.addr("cflow.dstaddrv6"));
    let nonzero = |a: Option<IpAddr>| a.is_some_and(|a| !a.is_unspecified());
    let v4_used = (v4s.is_some() && v4d.is_some() && (nonzero(v4s) || nonzero(v4d)))
        || (v4s.is_some() && v6s.is_none() && v6d.is_none());
    let to16 = |a: Option<IpAddr>| a.map_or([0; 16], addr_to_bytes);
    let (src_addr, dst_addr) = if v4_used || (v6s.is_none() && v6d.is_none()) {
        (to16(v4s), to16(v4d))
    } else {
        (to16(v6s), to16(v6d))
    };

    // A template may carry IE 7 / 11 twice (Huawei's SRv6 export: the outer IPv6 header's
    // ports, zero, then the inner IPv4 packet's); flowplane keeps the last occurrence of every
    // IE, so the oracle does too. tshark 4.0 also shows tcp/udpSource/DestinationPort
    // (180-183) under the names of IE 7 / 11; in a v9 record that carries both (Cisco NBAR)
    // only those repeat the value in parentheses ("SrcPort: 0 (0)" against "SrcPort: 34220"),
    // and flowplane reads only 7 / 11, so when a record mixes both display forms the
    // parenthesised ones are left out. (Some IPFIX dissections show IE 7 itself in the
    // parenthesised form; a record holding only that form keeps all its occurrences.)
    let port = |name: &str| {
        let plain = r.get_where(name, |f| !f.showname.ends_with(')'));
        plain.or_else(|| r.get(name)).and_then(tshark::parse_num)
    };
    let dst_port = match port("cflow.dstport") {
        Some(p) => p,
        None => r.num(&["cflow.icmp_type_code_ipv4"]).unwrap_or_else(|| {
            let t = r.num(&["cflow.icmp_ipv4_type", "cflow.icmp_ipv6_type"]);
            let c = r.num(&["cflow.icmp_ipv4_code", "cflow.icmp_ipv6_code"]);
            if t.is_none() && c.is_none() {
                0
            } else {
                (t.unwrap_or(0) << 8) | c.unwrap_or(0)
            }
        }),
    };

    // Times: absolute forms first, then sysUpTime-relative ones.
    let at = |sw: u64| -> Option<u64> {
        match (x.version, time.sys_uptime_ms) {
            (5 | 9, Some(up)) => {
                let age = u64::from((up as u32).wrapping_sub(sw as u32));
                Some(time.export_ms.saturating_sub(age))
            }
            _ => {
                let init = r
                    .get("cflow.sys_init_time")
                    .and_then(parse_abs_time_ms)
                    .or(opts.sys_init_ms);
                Some(init.map_or(0, |i| i + sw))
            }
        }
    };
    let rel = |name: &str| r.get(name).and_then(parse_secs_ms).map_or(Some(0), at);
    let rel_zero = || at(0);
    // tshark 4.0 shows a FIRST/LAST_SWITCHED of 0 inside the "(switched)" duration as an
    // absolute time of 1970 (cflow.abstimestart / abstimeend, zero bytes): it is sysUpTime 0.
    let switched = r
        .fields
        .iter()
        .any(|f| f.name == "cflow.timedelta" && f.showname.contains("(switched)"));
    let time_of = |abs: &str, uptime: &str| {
        let zero_uptime = switched
            && r.fields
                .iter()
                .any(|f| f.name == abs && !f.is_reverse() && f.is_zero());
        match r.get(abs) {
            Some(_) if zero_uptime => rel_zero(),
            Some(s) => parse_abs_time_ms(s),
            None => rel(uptime),
        }
    };

    let sampling_rate = if x.version == 5 {
        x.header
            .num(&["cflow.samplerate"])
            .map_or(1, |v| (v as u32).max(1))
    } else {
        record_rate(r)
            .or_else(|| sampler_of(r).and_then(|s| opts.samplers.get(&s).copied()))
            .or(opts.scope_rate)
            .unwrap_or(1)
    };
    let domain_id = if x.version == 5 {
        (x.header.num(&["cflow.engine_type"]).unwrap_or(0) << 8)
            | x.header.num(&["cflow.engine_id"]).unwrap_or(0)
    } else {
        u64::from(x.domain.unwrap_or(0))
    };

    Expected {
        src_addr,
        dst_addr,
        src_port: port("cflow.srcport").unwrap_or(0),
        dst_port,
        protocol: n(&["cflow.protocol"]),
        tcp_flags: n(&["cflow.tcpflags"]) & 0xff,
        tos: n(&["cflow.tos"]),
        input_if: n(&["cflow.inputint", "cflow.ingress_physical_interface"]),
        output_if: n(&["cflow.outputint", "cflow.egress_physical_interface"]),
        bytes: n(&[
            "cflow.octets",
            "cflow.permanent_octets",
            "cflow.post_octets",
        ]),
        packets: n(&[
            "cflow.packets",
            "cflow.permanent_packets",
            "cflow.post_packets",
        ]),
        src_as: n(&["cflow.srcas"]),
        dst_as: n(&["cflow.dstas"]),
        start_ms: time_of("cflow.abstimestart", "cflow.timestart"),
        end_ms: time_of("cflow.abstimeend", "cflow.timeend"),
        sampling_rate,
        domain_id,
        exporter: addr_to_bytes(src.ip()),
    }
}

/// Field-by-field differences: (field, ours, tshark's).
fn differences(o: &FlowRecord, e: &Expected) -> Vec<(&'static str, String, String)> {
    let mut d = Vec::new();
    let addr = |b: &[u8; 16]| flowplane_decoders::bytes_to_addr(b).to_string();
    let mut num = |name: &'static str, ours: u64, exp: u64| {
        if ours != exp {
            d.push((name, ours.to_string(), exp.to_string()));
        }
    };
    num("src_port", o.src_port.into(), e.src_port);
    num("dst_port", o.dst_port.into(), e.dst_port);
    num("protocol", o.protocol.into(), e.protocol);
    num("tcp_flags", o.tcp_flags.into(), e.tcp_flags);
    num("tos", o.tos.into(), e.tos);
    num("input_if", o.input_if.into(), e.input_if);
    num("output_if", o.output_if.into(), e.output_if);
    num("bytes", o.bytes, e.bytes);
    num("packets", o.packets, e.packets);
    num("src_as", o.src_as.into(), e.src_as);
    num("dst_as", o.dst_as.into(), e.dst_as);
    num(
        "sampling_rate",
        o.sampling_rate.into(),
        e.sampling_rate.into(),
    );
    num("domain_id", o.domain_id.into(), e.domain_id);
    if let Some(s) = e.start_ms {
        num("start_ms", o.start_ms, s);
    }
    if let Some(s) = e.end_ms {
        num("end_ms", o.end_ms, s);
    }
    for (name, ours, exp) in [
        ("src_addr", &o.src_addr, &e.src_addr),
        ("dst_addr", &o.dst_addr, &e.dst_addr),
        ("exporter", &o.exporter, &e.exporter),
    ] {
        if ours != exp {
            d.push((name, addr(ours), addr(exp)));
        }
    }
    d
}

// ---------------------------------------------------------------------------------------------
// Comparison.

/// A record tshark expects, with where it came from.
struct Want {
    set_index: usize,
    set_id: u16,
    exp: Expected,
}

fn compare(run: &Run, e: &corpus::Entry, used: &mut [bool]) -> Result<Summary, String> {
    let mut state: HashMap<(SocketAddr, u16, u32), OptionsState> = HashMap::new();
    let mut errors = String::new();
    let mut sum = Summary {
        datagrams: run.ours.len(),
        records: 0,
        exceptions: 0,
    };

    for (fi, frame) in run.frames.iter().enumerate() {
        let Some(x) = frame.export.as_ref() else {
            continue;
        };
        let src = run.all_src[fi];
        let key = (src, x.version, x.domain.unwrap_or(0));
        let time = header_time(x);
        let mut wants = Vec::new();
        for (si, set) in x.sets.iter().enumerate() {
            let st = state.entry(key).or_default();
            if set.is_template_set() && x.version != 5 {
                for id in &set.defines {
                    if set.is_options_template_set() {
                        st.options_templates.insert(*id);
                    } else {
                        st.options_templates.remove(id);
                    }
                }
                continue;
            }
            if x.version != 5 && st.options_templates.contains(&set.id) {
                for r in &set.records {
                    if let Some(rate) = record_rate(r) {
                        match sampler_of(r) {
                            Some(s) => {
                                st.samplers.insert(s, rate);
                            }
                            None => st.scope_rate = Some(rate),
                        }
                    }
                    if let Some(t) = r.get("cflow.sys_init_time").and_then(parse_abs_time_ms) {
                        st.sys_init_ms = Some(t);
                    }
                }
                continue;
            }
            for r in &set.records {
                let exp = expected(r, x, src, st, &time);
                wants.push(Want {
                    set_index: si,
                    set_id: set.id,
                    exp,
                });
            }
        }
        if fi < run.primed {
            continue;
        }
        let di = fi - run.primed;
        let ours = &run.ours[di];
        let frame_no = di + 1;
        let mut owned: Vec<FlowRecord>;
        let mut records: &[FlowRecord] = &ours.records;

        for (i, ex) in EXCEPTIONS.iter().enumerate() {
            if ex.file != e.path || ex.frame != frame_no {
                continue;
            }
            let here = format!("{} frame {frame_no}: exception {:?}", e.path, ex.diff);
            match ex.diff {
                Diff::V9AfterHeaderCount { count } => {
                    let dissected = 20 + x.sets.iter().map(|s| s.length).sum::<usize>();
                    let ok = x.version == 9
                        && records.len() == wants.len() + count
                        && dissected < ours.datagram.payload.len();
                    if !ok {
                        let _ = writeln!(
                            errors,
                            "{here}: ours {} records, tshark {}, header count {:?}",
                            records.len(),
                            wants.len(),
                            x.count
                        );
                        continue;
                    }
                    records = &records[..wants.len()];
                }
                Diff::HeldUntilTemplate { set, count } => {
                    let earlier_no_template = run.frames[run.primed..=fi].iter().any(|f| {
                        f.export
                            .as_ref()
                            .is_some_and(|x| x.sets.iter().any(|s| s.id == set && s.no_template))
                    });
                    let defining = x
                        .sets
                        .iter()
                        .position(|s| s.is_template_set() && s.defines.contains(&set));
                    let (true, Some(def)) = (earlier_no_template, defining) else {
                        let _ = writeln!(
                            errors,
                            "{here}: tshark shows no earlier undecodable set {set} or no template \
                             {set} in this datagram"
                        );
                        continue;
                    };
                    if records.len() != wants.len() + count {
                        let _ = writeln!(
                            errors,
                            "{here}: ours {} records, tshark {}",
                            records.len(),
                            wants.len()
                        );
                        continue;
                    }
                    let pos = wants.iter().filter(|w| w.set_index < def).count();
                    let mut kept = records[..pos].to_vec();
                    kept.extend_from_slice(&records[pos + count..]);
                    owned = kept;
                    records = &owned;
                }
            }
            used[i] = true;
            sum.exceptions += 1;
            eprintln!("corpus: {here}: tshark departs from the RFC: {}", ex.reason);
        }

        if records.len() != wants.len() {
            let _ = writeln!(
                errors,
                "{} frame {frame_no} (tshark frame {}): record count: ours {} (error {:?}, held {}), \
                 tshark {} (sets: {})",
                e.path,
                frame.number,
                records.len(),
                ours.result.error.map(DecodeError::reason),
                ours.result.sets_held,
                wants.len(),
                x.sets
                    .iter()
                    .map(|s| format!(
                        "{}:{}{}",
                        s.id,
                        s.records.len(),
                        if s.no_template { "(no template)" } else { "" }
                    ))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            continue;
        }
        for (ri, (o, w)) in records.iter().zip(&wants).enumerate() {
            let diffs = differences(o, &w.exp);
            sum.records += 1;
            for (field, ours_v, want_v) in diffs {
                let _ = writeln!(
                    errors,
                    "{} frame {frame_no} (tshark frame {}) set {} [id={}] record {ri}: {field}: \
                     ours {ours_v}, tshark {want_v}",
                    e.path,
                    frame.number,
                    w.set_index + 1,
                    w.set_id
                );
            }
        }
    }
    if errors.is_empty() {
        Ok(sum)
    } else {
        // Keep reports readable: the first 40 lines say enough.
        let lines: Vec<&str> = errors.lines().collect();
        let more = lines.len().saturating_sub(40);
        let mut msg = lines[..lines.len().min(40)].join("\n");
        if more > 0 {
            let _ = write!(msg, "\n... and {more} more");
        }
        Err(msg)
    }
}
