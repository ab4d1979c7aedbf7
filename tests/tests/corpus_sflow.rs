//! The sFlow corpus test: every sFlow capture in `../shared/corpus` goes through flowplane's
//! decoder and through tshark, and every flow sample and counter sample must agree.
//!
//! * One [`Decoder`] per file; datagrams whose first word is `00 00 00 05` are sFlow (the
//!   tcpdump capture mixes NetFlow v5 on the same port: those are left to `corpus.rs`).
//! * Per datagram, per sample in wire order: each flow sample (formats 1 and 3) must be one of
//!   flowplane's flow records, compared field by field: addresses, ports, protocol, TCP flags,
//!   ToS, frame length (`bytes`), packets, sampling rate, input and output interface with their
//!   format bits, VLANs, prefix lengths, source and destination AS, sub-agent, exporter. Each
//!   counter sample with generic or Ethernet interface counters must be one of flowplane's
//!   counter records, compared counter by counter.
//! * The 5-tuple comes from tshark's own dissection of the sampled header (`ip.*`, `tcp.*`,
//!   ...), not from flowplane's reading of it.
//! * Where flowplane follows the sFlow specification and tshark 4.0 does not, [`EXCEPTIONS`]
//!   names the file, the frame, the sample and what differs; each exception is checked to hold
//!   exactly as described (and to be used), so it cannot hide anything else.
//! * Malformed files (MANIFEST "MALFORMED") must give counted errors and no panic.
//!
//! The test fails when tshark or the corpus is missing, unless `FLOWPLANE_SKIP_CORPUS=1`.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use flowplane::capture::{Datagram, read_capture};
use flowplane_decoders::sflow::{CounterSample, DataFormat};
use flowplane_decoders::{
    CounterRecord, DatagramResult, Decoder, DecoderLimits, FlowRecord, SflowPacket, addr_to_bytes,
    bytes_to_addr,
};
use flowplane_tests::corpus;
use flowplane_tests::tshark::{self, Record, SflowDatagram, SflowFrame, SflowSample};

// ---------------------------------------------------------------------------------------------
// Exceptions: where tshark 4.0 departs from the sFlow specification and flowplane does not.

/// What differs between tshark and flowplane in one sample, and how the test checks it.
#[derive(Clone, Copy, Debug)]
enum Diff {
    /// tshark 4.0 does not skip a counter record it cannot decode (here the Host sFlow
    /// structures 2000..2006) by its declared length: it reads on from inside the record and
    /// takes its data for further records, so it shows an Ethernet counters record the sample
    /// does not hold. flowplane skips unknown records by their length, as the specification's
    /// extensibility rules require, and emits no counter record for a sample without interface
    /// counters. Checked: tshark shows a record of format `unknown` followed by a generic or
    /// Ethernet record whose declared length is shorter than that structure (impossible on the
    /// wire) and marks the frame malformed; walking the sample by its declared lengths with
    /// flowplane's views finds exactly `records` records, none of them format 1 or 2; and
    /// flowplane emitted no counter record for the datagram.
    CounterRecordNotSkipped { unknown: u64, records: usize },
}

/// One exception: file, 1-based frame number in the capture, 0-based sample index in the
/// datagram, the difference, and why flowplane is right.
struct Exception {
    file: &'static str,
    frame: usize,
    sample: usize,
    diff: Diff,
    reason: &'static str,
}

/// Every known disagreement with tshark. Each one must occur exactly as described.
const EXCEPTIONS: &[Exception] = &[Exception {
    file: "tcpdump/sflow_multiple_counter_30_pdus.pcap",
    frame: 18,
    sample: 0,
    diff: Diff::CounterRecordNotSkipped {
        unknown: 2001,
        records: 6,
    },
    reason: "the counter sample holds six Host sFlow records (2001, 2005, 2003, 2004, 2006, \
             2000); tshark reads the 36-byte 2001 record's data as an 'Ethernet interface \
             counters' record of length 2, flowplane skips every record by its length and finds \
             no interface counters",
}];

// ---------------------------------------------------------------------------------------------
// Entry points.

#[test]
fn sflow_corpus_matches_tshark() {
    let Some(dir) = corpus::dir_or_skip("corpus_sflow") else {
        return;
    };
    let entries = corpus::read_index(&dir).expect("read the corpus index");
    let mut failures = Vec::new();
    let mut used = vec![false; EXCEPTIONS.len()];
    let mut total = Summary::default();
    let mut files = 0;

    for e in entries.iter().filter(|e| e.protocol.contains("sFlow")) {
        if e.malformed {
            continue; // malformed_sflow_files_count_errors
        }
        files += 1;
        match compare_file(&dir, &e.path, &mut used) {
            Ok(sum) => {
                eprintln!(
                    "corpus_sflow: {:<50} {:>3} datagrams {:>4} flow samples {:>4} counter \
                     samples compared, {} exception(s)",
                    e.path, sum.datagrams, sum.flows, sum.counters, sum.exceptions
                );
                if sum.datagrams == 0 {
                    failures.push(format!("{}: no sFlow datagram", e.path));
                }
                total.add(&sum);
            }
            Err(msg) => {
                eprintln!("corpus_sflow: {:<50} FAILED", e.path);
                failures.push(msg);
            }
        }
    }
    for (i, ex) in EXCEPTIONS.iter().enumerate() {
        if !used[i] {
            failures.push(format!(
                "{} frame {} sample {}: exception {:?} was not needed (stale exception)",
                ex.file, ex.frame, ex.sample, ex.diff
            ));
        }
    }
    eprintln!(
        "corpus_sflow: {files} files, {} datagrams, {} flow samples and {} counter samples \
         compared, {} exceptions, {} failing files",
        total.datagrams,
        total.flows,
        total.counters,
        total.exceptions,
        failures.len()
    );
    assert!(total.flows > 0 && total.counters > 0, "nothing compared");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn malformed_sflow_files_count_errors() {
    let Some(dir) = corpus::dir_or_skip("corpus_sflow") else {
        return;
    };
    let entries = corpus::read_index(&dir).expect("read the corpus index");
    let mut seen = 0;
    for e in entries
        .iter()
        .filter(|e| e.malformed && e.protocol.contains("sFlow"))
    {
        seen += 1;
        let datagrams = sflow_datagrams(&dir, &e.path).expect("read the capture");
        let mut dec = Decoder::new(DecoderLimits::default());
        let mut errors = 0u64;
        for d in &datagrams {
            let r = dec.decode_with_counters(d.src, d.ts_ms, &d.payload, |_| {}, |_| {});
            errors += u64::from(r.error.is_some());
        }
        let counted: u64 = dec.stats().errors.iter().sum();
        eprintln!(
            "corpus_sflow: {:<50} MALFORMED: {} datagrams, {} errors",
            e.path,
            datagrams.len(),
            errors
        );
        assert!(
            errors > 0,
            "{}: malformed file decoded without error",
            e.path
        );
        assert_eq!(counted, errors, "{}: DecodeStats disagree", e.path);
    }
    assert!(seen > 0, "the MANIFEST lists no malformed sFlow file");
}

/// The comparator must report a difference: flip one field of a flow and of a counter record
/// and check that the report names the file, the sample, the field and both values.
#[test]
fn sflow_comparator_reports_a_flipped_field() {
    let Some(dir) = corpus::dir_or_skip("corpus_sflow") else {
        return;
    };
    let mut used = vec![false; EXCEPTIONS.len()];

    let path = "akvorado/data-1140.pcap";
    let mut run = prepare(&dir, path).expect("prepare");
    run.ours[0].flows[1].dst_as ^= 1;
    let err = compare(&run, path, &mut used).expect_err("a flipped dst_as must be reported");
    assert!(
        err.contains(path) && err.contains("sample 1") && err.contains("dst_as"),
        "{err}"
    );

    let path = "tcpdump/sflow-print-v6.pcap";
    let mut run = prepare(&dir, path).expect("prepare");
    run.ours[0].counters[0].in_octets ^= 1;
    let err = compare(&run, path, &mut used).expect_err("a flipped counter must be reported");
    assert!(
        err.contains("sample 0") && err.contains("in_octets"),
        "{err}"
    );

    let mut run = prepare(&dir, path).expect("prepare");
    run.ours[0].counters.pop();
    let err = compare(&run, path, &mut used).expect_err("a lost counter must be reported");
    assert!(err.contains("count"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Environment.

fn is_sflow(d: &Datagram) -> bool {
    d.payload.starts_with(&[0, 0, 0, 5])
}

fn sflow_datagrams(dir: &std::path::Path, rel: &str) -> Result<Vec<Datagram>, String> {
    let c = read_capture(corpus::file(dir, rel)).map_err(|e| format!("{rel}: read: {e}"))?;
    Ok(c.datagrams.into_iter().filter(is_sflow).collect())
}

// ---------------------------------------------------------------------------------------------
// Running both sides.

/// One sFlow datagram decoded by flowplane.
struct Ours {
    datagram: Datagram,
    result: DatagramResult,
    /// Flow and counter records in the order the samples came.
    order: Vec<Kind>,
    flows: Vec<FlowRecord>,
    counters: Vec<CounterRecord>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Flow,
    Counter,
}

struct Run {
    ours: Vec<Ours>,
    /// tshark's frames that hold an sFlow layer, in capture order.
    frames: Vec<SflowFrame>,
}

#[derive(Debug, Default)]
struct Summary {
    datagrams: usize,
    flows: usize,
    counters: usize,
    exceptions: usize,
}

impl Summary {
    fn add(&mut self, o: &Self) {
        self.datagrams += o.datagrams;
        self.flows += o.flows;
        self.counters += o.counters;
        self.exceptions += o.exceptions;
    }
}

fn prepare(dir: &std::path::Path, rel: &str) -> Result<Run, String> {
    let datagrams = sflow_datagrams(dir, rel)?;
    let frames: Vec<SflowFrame> = tshark::dissect_sflow(&corpus::file(dir, rel))
        .map_err(|x| format!("{rel}: tshark: {x:#}"))?
        .into_iter()
        .filter(|f| f.datagram.is_some())
        .collect();
    if frames.len() != datagrams.len() {
        return Err(format!(
            "{rel}: tshark found {} sFlow datagrams, flowplane's capture reader {}",
            frames.len(),
            datagrams.len()
        ));
    }

    let mut dec = Decoder::new(DecoderLimits::default());
    let mut ours = Vec::new();
    for d in datagrams {
        // Both callbacks record the order in which the samples came.
        let order = RefCell::new(Vec::new());
        let (mut flows, mut counters) = (Vec::new(), Vec::new());
        let result = dec.decode_with_counters(
            d.src,
            d.ts_ms,
            &d.payload,
            |r| {
                order.borrow_mut().push(Kind::Flow);
                flows.push(*r);
            },
            |c| {
                order.borrow_mut().push(Kind::Counter);
                counters.push(*c);
            },
        );
        let order = order.into_inner();
        ours.push(Ours {
            datagram: d,
            result,
            order,
            flows,
            counters,
        });
    }
    Ok(Run { ours, frames })
}

fn compare_file(dir: &std::path::Path, rel: &str, used: &mut [bool]) -> Result<Summary, String> {
    let run = prepare(dir, rel)?;
    compare(&run, rel, used)
}

// ---------------------------------------------------------------------------------------------
// What tshark says.

/// One sample as tshark decoded it, turned into what flowplane must produce.
enum Want {
    Flow(Box<FlowWant>),
    Counter(Box<CounterRecord>),
    /// A sample flowplane skips (unknown format) or a counter sample without interface
    /// counters: nothing is emitted.
    Nothing,
}

/// The fields of a flow record tshark can vouch for.
#[derive(Debug, Default)]
struct FlowWant {
    src_addr: [u8; 16],
    dst_addr: [u8; 16],
    ip_version: u8,
    src_port: u64,
    dst_port: u64,
    protocol: u64,
    tcp_flags: u64,
    tos: u64,
    bytes: u64,
    sampling_rate: u64,
    input_if: (u64, u64),
    output_if: (u64, u64),
    src_vlan: u64,
    dst_vlan: u64,
    src_mask: u64,
    dst_mask: u64,
    src_as: u64,
    dst_as: u64,
    domain_id: u64,
    exporter: [u8; 16],
}

fn addr(r: &Record, name: &str) -> Option<[u8; 16]> {
    r.first(name)?.parse::<IpAddr>().ok().map(addr_to_bytes)
}

fn first_num(r: &Record, name: &str) -> Option<u64> {
    r.first(name).and_then(tshark::parse_num)
}

fn want_sample(s: &SflowSample, d: &SflowDatagram, src: SocketAddr) -> Result<Want, String> {
    match (s.enterprise, s.format) {
        (Some(0), Some(1 | 3)) => want_flow(s, d, src).map(|w| Want::Flow(Box::new(w))),
        (Some(0), Some(2 | 4)) => {
            Ok(want_counter(s, d, src).map_or(Want::Nothing, |c| Want::Counter(Box::new(c))))
        }
        _ => Ok(Want::Nothing),
    }
}

fn want_flow(s: &SflowSample, d: &SflowDatagram, src: SocketAddr) -> Result<FlowWant, String> {
    let f = &s.fields;
    let n = |name: &str| f.num(&[name]);
    let mut w = FlowWant {
        sampling_rate: n("sflow.flow_sample.sampling_rate").unwrap_or(1).max(1),
        domain_id: d.header.num(&["sflow_245.sub_agent_id"]).unwrap_or(0),
        exporter: addr_to_bytes(src.ip()),
        ..FlowWant::default()
    };

    // Interfaces: the expanded form shows format and value; the compact input interface is
    // shown as one word (format in the top two bits), the compact output as both.
    w.input_if = match (
        n("sflow.flow_sample.input_interface_format"),
        n("sflow.flow_sample.input_interface_value"),
    ) {
        (Some(fmt), Some(v)) => (fmt, v),
        _ => {
            let word = n("sflow.flow_sample.input_interface").unwrap_or(0);
            (word >> 30, word & 0x3fff_ffff)
        }
    };
    let out_fmt = n("sflow.flow_sample.output_interface_format")
        .or_else(|| n("sflow.flow_sample.output_interface.format"))
        .unwrap_or(0);
    w.output_if = (
        out_fmt,
        n("sflow.flow_sample.output_interface_value").unwrap_or(0),
    );

    let raw = s
        .records
        .iter()
        .find(|r| r.enterprise == Some(0) && r.format == Some(1));
    let sampled_ip = s
        .records
        .iter()
        .find(|r| r.enterprise == Some(0) && matches!(r.format, Some(3 | 4)));
    let raw_has_ip = raw.is_some_and(|r| {
        r.fields.position("ip.src").is_some() || r.fields.position("ipv6.src").is_some()
    });
    match (raw, sampled_ip) {
        (Some(r), _) if raw_has_ip || sampled_ip.is_none() => {
            let h = &r.fields;
            w.bytes = first_num(h, "sflow_245.header.frame_length").unwrap_or(0);
            l34_from_packet(h, &mut w);
            w.src_vlan = first_num(h, "vlan.id").unwrap_or(0);
        }
        (_, Some(_)) => {
            return Err(
                "a flow sample whose sampled IPv4/IPv6 record gives the 5-tuple (no raw header \
                 reaching IP): the corpus has none, and this test has no oracle for it yet"
                    .into(),
            );
        }
        // (None, None); (Some, None) is taken by the first arm.
        _ => {}
    }

    for r in s.records.iter().filter(|r| r.enterprise == Some(0)) {
        let h = &r.fields;
        match r.format {
            Some(1001) => {
                // tshark shows the 32-bit word; a value above 4095 is not a 12-bit VLAN id but an
                // agent's "unknown" (0xffff_ffff), which the record stores as 0.
                let vlan = |name| first_num(h, name).filter(|v| *v <= 0x0fff).unwrap_or(0);
                w.src_vlan = vlan("sflow_245.vlan.in");
                w.dst_vlan = vlan("sflow_245.vlan.out");
            }
            Some(1002) => {
                w.src_mask = first_num(h, "sflow_245.nexthop.src_mask").unwrap_or(0);
                w.dst_mask = first_num(h, "sflow_245.nexthop.dst_mask").unwrap_or(0);
            }
            Some(1003) => {
                w.src_as = first_num(h, "sflow_245.srcAS").unwrap_or(0);
                w.dst_as = r.as_path.last().copied().unwrap_or(0);
            }
            _ => {}
        }
    }
    Ok(w)
}

/// The 5-tuple from tshark's dissection of the sampled header: the outermost IP header and the
/// transport header right after it (fields in wire order; an ICMP error's quoted packet or a
/// VXLAN payload comes later and is not looked at).
fn l34_from_packet(h: &Record, w: &mut FlowWant) {
    let v4 = h.position("ip.src");
    let v6 = h.position("ipv6.src");
    let (is_v4, is_v6) = match (v4, v6) {
        (Some(a), Some(b)) => (a < b, b < a),
        (a, b) => (a.is_some(), b.is_some()),
    };
    if is_v4 {
        w.ip_version = 4;
        w.src_addr = addr(h, "ip.src").unwrap_or([0; 16]);
        w.dst_addr = addr(h, "ip.dst").unwrap_or([0; 16]);
        w.protocol = first_num(h, "ip.proto").unwrap_or(0);
        w.tos = first_num(h, "ip.dsfield").unwrap_or(0);
    } else if is_v6 {
        w.ip_version = 6;
        w.src_addr = addr(h, "ipv6.src").unwrap_or([0; 16]);
        w.dst_addr = addr(h, "ipv6.dst").unwrap_or([0; 16]);
        w.tos = first_num(h, "ipv6.tclass").unwrap_or(0);
        w.protocol = first_num(h, "ipv6.nxt").unwrap_or(0);
    } else {
        return;
    }

    // The transport header tshark dissected first.
    let transports = [
        ("tcp.srcport", 6),
        ("udp.srcport", 17),
        ("icmp.type", 1),
        ("icmpv6.type", 58),
    ];
    let first = transports
        .iter()
        .filter_map(|(name, proto)| h.position(name).map(|p| (p, *name, *proto)))
        .min();
    let Some((_, name, proto)) = first else {
        return;
    };
    // IPv6: the protocol is the last next-header, the one whose dissector ran.
    w.protocol = proto;
    match name {
        "tcp.srcport" => {
            w.src_port = first_num(h, "tcp.srcport").unwrap_or(0);
            w.dst_port = first_num(h, "tcp.dstport").unwrap_or(0);
            w.tcp_flags = first_num(h, "tcp.flags").unwrap_or(0) & 0xff;
        }
        "udp.srcport" => {
            w.src_port = first_num(h, "udp.srcport").unwrap_or(0);
            w.dst_port = first_num(h, "udp.dstport").unwrap_or(0);
        }
        "icmp.type" => {
            w.dst_port = first_num(h, "icmp.type").unwrap_or(0) << 8
                | first_num(h, "icmp.code").unwrap_or(0);
        }
        _ => {
            w.dst_port = first_num(h, "icmpv6.type").unwrap_or(0) << 8
                | first_num(h, "icmpv6.code").unwrap_or(0);
        }
    }
}

fn want_counter(s: &SflowSample, d: &SflowDatagram, src: SocketAddr) -> Option<CounterRecord> {
    let f = &s.fields;
    let n = |r: &Record, name: &str| first_num(r, name).unwrap_or(0);
    let n32 = |r: &Record, name: &str| u32::try_from(n(r, name)).unwrap_or(u32::MAX);
    let agent = addr(&d.header, "sflow_245.agent")
        .or_else(|| addr(&d.header, "sflow_245.agent.v6"))
        .unwrap_or([0; 16]);
    let mut c = CounterRecord {
        agent,
        exporter: addr_to_bytes(src.ip()),
        exporter_port: src.port(),
        sub_agent_id: n32(&d.header, "sflow_245.sub_agent_id"),
        uptime_ms: n32(&d.header, "sflow_245.sysuptime"),
        sample_sequence: n32(f, "sflow.counters_sample.sequence_number"),
        source_id_type: n32(f, "sflow.counters_sample.source_id_type"),
        source_id_index: n32(f, "sflow.counters_sample.source_id_index"),
        ..CounterRecord::default()
    };
    c.if_index = c.source_id_index;
    for r in s.records.iter().filter(|r| r.enterprise == Some(0)) {
        let h = &r.fields;
        match r.format {
            Some(1) => {
                c.has_generic = 1;
                c.if_index = n32(h, "sflow_245.ifindex");
                c.if_type = n32(h, "sflow_245.iftype");
                c.if_speed = n(h, "sflow_245.ifspeed");
                c.if_direction = n32(h, "sflow_245.ifdirection");
                c.if_status =
                    n32(h, "sflow_245.ifadmin_status") | n32(h, "sflow_245.ifoper_status") << 1;
                c.in_octets = n(h, "sflow_245.ifinoct");
                c.in_unicast_pkts = n32(h, "sflow_245.ifinpkt");
                c.in_multicast_pkts = n32(h, "sflow_245.ifinmcast");
                c.in_broadcast_pkts = n32(h, "sflow_245.ifinbcast");
                c.in_discards = n32(h, "sflow_245.ifindisc");
                c.in_errors = n32(h, "sflow_245.ifinerr");
                c.in_unknown_protos = n32(h, "sflow_245.ifinunk");
                c.out_octets = n(h, "sflow_245.ifoutoct");
                c.out_unicast_pkts = n32(h, "sflow_245.ifoutpkt");
                c.out_multicast_pkts = n32(h, "sflow_245.ifoutmcast");
                c.out_broadcast_pkts = n32(h, "sflow_245.ifoutbcast");
                c.out_discards = n32(h, "sflow_245.ifoutdisc");
                c.out_errors = n32(h, "sflow_245.ifouterr");
                c.promiscuous_mode = n32(h, "sflow_245.ifpromisc");
            }
            Some(2) => {
                c.has_ethernet = 1;
                c.dot3_alignment_errors = n32(h, "sflow_245.dot3StatsAlignmentErrors");
                c.dot3_fcs_errors = n32(h, "sflow_245.dot3StatsFCSErrors");
                c.dot3_single_collision_frames = n32(h, "sflow_245.dot3StatsSingleCollisionFrames");
                c.dot3_multiple_collision_frames =
                    n32(h, "sflow_245.dot3StatsMultipleCollisionFrames");
                c.dot3_sqe_test_errors = n32(h, "sflow_245.dot3StatsSQETestErrors");
                c.dot3_deferred_transmissions = n32(h, "sflow_245.dot3StatsDeferredTransmissions");
                c.dot3_late_collisions = n32(h, "sflow_245.dot3StatsLateCollisions");
                c.dot3_excessive_collisions = n32(h, "sflow_245.dot3StatsExcessiveCollisions");
                c.dot3_internal_mac_transmit_errors =
                    n32(h, "sflow_245.dot3StatsInternalMacTransmitErrors");
                c.dot3_carrier_sense_errors = n32(h, "sflow_245.dot3StatsCarrierSenseErrors");
                c.dot3_frame_too_longs = n32(h, "sflow_245.dot3StatsFrameTooLongs");
                c.dot3_internal_mac_receive_errors =
                    n32(h, "sflow_245.dot3StatsInternalMacReceiveErrors");
                c.dot3_symbol_errors = n32(h, "sflow_245.dot3StatsSymbolErrors");
            }
            _ => {}
        }
    }
    (c.has_generic == 1 || c.has_ethernet == 1).then_some(c)
}

// ---------------------------------------------------------------------------------------------
// Comparison.

fn flow_differences(o: &FlowRecord, w: &FlowWant) -> Vec<(&'static str, String, String)> {
    let mut d = Vec::new();
    let mut num = |name: &'static str, ours: u64, exp: u64| {
        if ours != exp {
            d.push((name, ours.to_string(), exp.to_string()));
        }
    };
    num("ip_version", o.ip_version.into(), w.ip_version.into());
    num("src_port", o.src_port.into(), w.src_port);
    num("dst_port", o.dst_port.into(), w.dst_port);
    num("protocol", o.protocol.into(), w.protocol);
    num("tcp_flags", o.tcp_flags.into(), w.tcp_flags);
    num("tos", o.tos.into(), w.tos);
    num("bytes", o.bytes, w.bytes);
    num("packets", o.packets, 1);
    num("sampling_rate", o.sampling_rate.into(), w.sampling_rate);
    num("input_if_format", o.input_if_format.into(), w.input_if.0);
    num("input_if", o.input_if.into(), w.input_if.1);
    num("output_if_format", o.output_if_format.into(), w.output_if.0);
    num("output_if", o.output_if.into(), w.output_if.1);
    num("src_vlan", o.src_vlan.into(), w.src_vlan);
    num("dst_vlan", o.dst_vlan.into(), w.dst_vlan);
    num("src_mask", o.src_mask.into(), w.src_mask);
    num("dst_mask", o.dst_mask.into(), w.dst_mask);
    num("src_as", o.src_as.into(), w.src_as);
    num("dst_as", o.dst_as.into(), w.dst_as);
    num("domain_id", o.domain_id.into(), w.domain_id);
    for (name, ours, exp) in [
        ("src_addr", &o.src_addr, &w.src_addr),
        ("dst_addr", &o.dst_addr, &w.dst_addr),
        ("exporter", &o.exporter, &w.exporter),
    ] {
        if ours != exp {
            d.push((
                name,
                bytes_to_addr(ours).to_string(),
                bytes_to_addr(exp).to_string(),
            ));
        }
    }
    d
}

fn counter_differences(
    o: &CounterRecord,
    w: &CounterRecord,
) -> Vec<(&'static str, String, String)> {
    let mut d = Vec::new();
    macro_rules! cmp {
        ($($f:ident),* $(,)?) => {
            $(
                if o.$f != w.$f {
                    d.push((stringify!($f), format!("{:?}", o.$f), format!("{:?}", w.$f)));
                }
            )*
        };
    }
    cmp!(
        agent,
        exporter,
        exporter_port,
        sub_agent_id,
        uptime_ms,
        sample_sequence,
        source_id_type,
        source_id_index,
        if_index,
        if_type,
        if_speed,
        if_direction,
        if_status,
        in_octets,
        in_unicast_pkts,
        in_multicast_pkts,
        in_broadcast_pkts,
        in_discards,
        in_errors,
        in_unknown_protos,
        out_octets,
        out_unicast_pkts,
        out_multicast_pkts,
        out_broadcast_pkts,
        out_discards,
        out_errors,
        promiscuous_mode,
        dot3_alignment_errors,
        dot3_fcs_errors,
        dot3_single_collision_frames,
        dot3_multiple_collision_frames,
        dot3_sqe_test_errors,
        dot3_deferred_transmissions,
        dot3_late_collisions,
        dot3_excessive_collisions,
        dot3_internal_mac_transmit_errors,
        dot3_carrier_sense_errors,
        dot3_frame_too_longs,
        dot3_internal_mac_receive_errors,
        dot3_symbol_errors,
        has_generic,
        has_ethernet,
    );
    d
}

fn compare(run: &Run, path: &str, used: &mut [bool]) -> Result<Summary, String> {
    let mut errors = String::new();
    let mut sum = Summary {
        datagrams: run.ours.len(),
        ..Summary::default()
    };

    for (di, (ours, frame)) in run.ours.iter().zip(&run.frames).enumerate() {
        let Some(d) = frame.datagram.as_ref() else {
            continue;
        };
        let here = format!("{path} frame {} (datagram {})", frame.number, di + 1);
        if let Some(e) = ours.result.error {
            let _ = writeln!(
                errors,
                "{here}: flowplane error {e} on a datagram tshark decodes"
            );
        }
        let (mut fi, mut ci) = (0usize, 0usize);
        let mut wanted = Vec::new();

        for (si, s) in d.samples.iter().enumerate() {
            let exception = EXCEPTIONS
                .iter()
                .position(|x| x.file == path && x.frame == frame.number && x.sample == si);
            if let Some(i) = exception {
                let ex = &EXCEPTIONS[i];
                match check_exception(ex, s, frame, ours, si) {
                    Ok(()) => {
                        used[i] = true;
                        sum.exceptions += 1;
                        eprintln!(
                            "corpus_sflow: {here} sample {si}: tshark departs from the \
                             specification: {}",
                            ex.reason
                        );
                    }
                    Err(msg) => {
                        let _ =
                            writeln!(errors, "{here} sample {si}: exception {:?}: {msg}", ex.diff);
                    }
                }
                continue;
            }
            let want = match want_sample(s, d, ours.datagram.src) {
                Ok(w) => w,
                Err(msg) => {
                    let _ = writeln!(errors, "{here} sample {si}: {msg}");
                    continue;
                }
            };
            match want {
                Want::Nothing => {}
                Want::Flow(w) => {
                    wanted.push(Kind::Flow);
                    let Some(o) = ours.flows.get(fi) else {
                        let _ = writeln!(
                            errors,
                            "{here} sample {si}: flow record count: ours {}",
                            ours.flows.len()
                        );
                        continue;
                    };
                    fi += 1;
                    sum.flows += 1;
                    for (field, a, b) in flow_differences(o, &w) {
                        let _ = writeln!(
                            errors,
                            "{here} sample {si} ({}): {field}: ours {a}, tshark {b}",
                            s.label
                        );
                    }
                }
                Want::Counter(w) => {
                    wanted.push(Kind::Counter);
                    let Some(o) = ours.counters.get(ci) else {
                        let _ = writeln!(
                            errors,
                            "{here} sample {si}: counter record count: ours {}",
                            ours.counters.len()
                        );
                        continue;
                    };
                    ci += 1;
                    sum.counters += 1;
                    for (field, a, b) in counter_differences(o, &w) {
                        let _ = writeln!(
                            errors,
                            "{here} sample {si} ({}): {field}: ours {a}, tshark {b}",
                            s.label
                        );
                    }
                }
            }
        }
        if fi != ours.flows.len() || ci != ours.counters.len() {
            let _ = writeln!(
                errors,
                "{here}: record count: ours {} flows and {} counters, tshark {} and {}",
                ours.flows.len(),
                ours.counters.len(),
                fi,
                ci
            );
        } else if wanted != ours.order {
            let _ = writeln!(
                errors,
                "{here}: flow and counter records out of sample order"
            );
        }
    }
    if errors.is_empty() {
        Ok(sum)
    } else {
        let lines: Vec<&str> = errors.lines().collect();
        let more = lines.len().saturating_sub(40);
        let mut msg = lines[..lines.len().min(40)].join("\n");
        if more > 0 {
            let _ = write!(msg, "\n... and {more} more");
        }
        Err(msg)
    }
}

fn check_exception(
    ex: &Exception,
    s: &SflowSample,
    frame: &SflowFrame,
    ours: &Ours,
    si: usize,
) -> Result<(), String> {
    match ex.diff {
        Diff::CounterRecordNotSkipped { unknown, records } => {
            // What tshark shows: the unknown record, then an interface counters record shorter
            // than its fixed layout (88 bytes generic, 52 Ethernet).
            let at = s
                .records
                .iter()
                .position(|r| r.format == Some(unknown))
                .ok_or_else(|| format!("tshark shows no record of format {unknown}"))?;
            let impossible = s.records[at + 1..].iter().any(|r| {
                let len = r.fields.num(&["sflow_5.flow_data_length"]).unwrap_or(0);
                matches!((r.format, len), (Some(1), 0..88) | (Some(2), 0..52))
            });
            if !impossible {
                return Err("tshark shows no impossible interface counters record".into());
            }
            if !frame.malformed {
                return Err("tshark does not mark the frame malformed".into());
            }

            // What the specification says: walk the sample by its declared lengths.
            let packet = SflowPacket::new_checked(&ours.datagram.payload[..])
                .map_err(|e| format!("flowplane's view refuses the datagram: {e}"))?;
            let sample = packet
                .samples()
                .nth(si)
                .ok_or("no such sample")?
                .map_err(|e| e.to_string())?;
            let expanded = sample.format == DataFormat::EXPANDED_COUNTER_SAMPLE;
            let cs = CounterSample::parse(sample.data, expanded).map_err(|e| e.to_string())?;
            let formats: Vec<DataFormat> = cs
                .records
                .map(|r| r.map(|r| r.format))
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?;
            if formats.len() != records || formats.first() != Some(&DataFormat(unknown as u32)) {
                return Err(format!("the sample holds {formats:?}"));
            }
            if formats.iter().any(|f| matches!(f.0, 1 | 2)) {
                return Err(format!("the sample holds interface counters: {formats:?}"));
            }
            if ours.result.error.is_some() || !ours.counters.is_empty() {
                return Err(format!(
                    "flowplane: error {:?}, {} counter records",
                    ours.result.error,
                    ours.counters.len()
                ));
            }
            Ok(())
        }
    }
}
