//! `flowplane decode`: the decoders of the data plane, run over a capture, for debugging an
//! exporter.

use std::cell::RefCell;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use flowplane::capture::{self, Capture};
use flowplane_decoders::{
    CounterRecord, DecodeError, DecodeStats, Decoder, DecoderLimits, FlowFormat, FlowRecord,
    SflowStats, bytes_to_addr,
};
use serde_json::json;

use super::utc_ms;

#[derive(Debug, clap::Args)]
pub(crate) struct DecodeArgs {
    /// Capture to decode: pcap, pcapng, or a raw dump of NetFlow v5 / v9, IPFIX or sFlow
    /// datagrams (recognised by content, not by name).
    #[arg(value_name = "FILE")]
    file: PathBuf,

    /// Decode this capture first, without printing its records, so that its templates (and
    /// sampler options) are known; repeat for several files, applied in order.
    #[arg(long, value_name = "FILE")]
    prime: Vec<PathBuf>,

    /// Print the summary on stderr as one JSON object instead of a text line.
    #[arg(long)]
    json: bool,
}

/// Decodes the priming files, then the file, printing each record of the file as a JSON line.
///
/// Fails only when a file cannot be read; decode errors are counted in the summary.
pub(crate) fn decode(args: &DecodeArgs) -> anyhow::Result<ExitCode> {
    let mut decoder = Decoder::new(DecoderLimits::default());

    for prime in &args.prime {
        let capture = capture::read_capture(prime).context("priming file")?;
        for d in &capture.datagrams {
            decoder.decode(d.src, d.ts_ms, &d.payload, |_| {});
        }
    }
    let primed = *decoder.stats();

    let capture = capture::read_capture(&args.file)?;
    let mut out = BufWriter::new(io::stdout().lock());
    let mut formats = [0u64; 5];
    let mut write_error = None;

    let sflow_before = *decoder.sflow_stats();
    for (index, d) in capture.datagrams.iter().enumerate() {
        decoder.expire(d.ts_ms);
        // Flow records and (sFlow) interface counter samples, in datagram order, one line each.
        let lines = RefCell::new((&mut out, &mut write_error));
        let write = |line: serde_json::Value| {
            let mut guard = lines.borrow_mut();
            let (out, err) = &mut *guard;
            if err.is_none()
                && let Err(e) = writeln!(out, "{line}")
            {
                **err = Some(e);
            }
        };
        let result = decoder.decode_with_counters(
            d.src,
            d.ts_ms,
            &d.payload,
            |r| write(record_json(r, index, d.ts_ms)),
            |c| write(counters_json(c, index, d.ts_ms)),
        );
        if let Some(format) = result.format {
            formats[format_slot(format)] += 1;
        }
        if let Some(e) = write_error.take() {
            // A closed pipe (`flowplane decode f | head`) is the reader's choice, not a failure.
            if e.kind() == io::ErrorKind::BrokenPipe {
                return Ok(ExitCode::SUCCESS);
            }
            return Err(e).context("cannot write to stdout");
        }
    }
    match out.flush() {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
        other => other.context("cannot write to stdout")?,
    }

    let stats = delta(decoder.stats(), &primed);
    let sflow = sflow_delta(decoder.sflow_stats(), &sflow_before);
    let summary = Summary {
        capture: &capture,
        stats: &stats,
        sflow: &sflow,
        formats: &formats,
        primed_files: args.prime.len(),
        waiting: decoder.pending_sets(),
    };
    if args.json {
        eprintln!("{}", summary.json());
    } else {
        eprintln!("{}", summary.text());
    }
    Ok(ExitCode::SUCCESS)
}

/// One record as a JSON object: every [`FlowRecord`] field, addresses as text, the format by
/// name, times in milliseconds and in RFC 3339, and where it came from in the capture.
fn record_json(r: &FlowRecord, datagram: usize, capture_ms: u64) -> serde_json::Value {
    json!({
        "record": "flow",
        "datagram": datagram,
        "capture_time": utc_ms(capture_ms),
        "format": r.flow_format().name(),
        "exporter": r.exporter_ip().to_string(),
        "exporter_port": r.exporter_port,
        "domain_id": r.domain_id,
        "ip_version": r.ip_version,
        "src_addr": r.src_ip().to_string(),
        "dst_addr": r.dst_ip().to_string(),
        "src_port": r.src_port,
        "dst_port": r.dst_port,
        "protocol": r.protocol,
        "tcp_flags": r.tcp_flags,
        "tos": r.tos,
        "input_if": r.input_if,
        "output_if": r.output_if,
        "src_as": r.src_as,
        "dst_as": r.dst_as,
        "bytes": r.bytes,
        "packets": r.packets,
        "sampling_rate": r.sampling_rate,
        "start_ms": r.start_ms,
        "end_ms": r.end_ms,
        "start": (r.start_ms != 0).then(|| utc_ms(r.start_ms)),
        "end": (r.end_ms != 0).then(|| utc_ms(r.end_ms)),
        "input_if_format": r.input_if_format,
        "output_if_format": r.output_if_format,
        "src_mask": r.src_mask,
        "dst_mask": r.dst_mask,
        "src_vlan": r.src_vlan,
        "dst_vlan": r.dst_vlan,
        "header_truncated": r.truncated != 0,
    })
}

/// One interface counter sample (sFlow) as a JSON object, every field of [`CounterRecord`].
fn counters_json(c: &CounterRecord, datagram: usize, capture_ms: u64) -> serde_json::Value {
    let mut o = serde_json::Map::new();
    for (k, v) in [
        ("record", json!("counters")),
        ("datagram", json!(datagram)),
        ("capture_time", json!(utc_ms(capture_ms))),
        ("format", json!("sflow")),
        ("agent", json!(bytes_to_addr(&c.agent).to_string())),
        ("exporter", json!(bytes_to_addr(&c.exporter).to_string())),
        ("if_speed", json!(c.if_speed)),
        ("in_octets", json!(c.in_octets)),
        ("out_octets", json!(c.out_octets)),
    ] {
        o.insert(k.to_owned(), v);
    }
    for (k, v) in [
        ("sub_agent_id", c.sub_agent_id),
        ("uptime_ms", c.uptime_ms),
        ("sample_sequence", c.sample_sequence),
        ("source_id_type", c.source_id_type),
        ("source_id_index", c.source_id_index),
        ("if_index", c.if_index),
        ("if_type", c.if_type),
        ("if_direction", c.if_direction),
        ("if_status", c.if_status),
        ("in_unicast_pkts", c.in_unicast_pkts),
        ("in_multicast_pkts", c.in_multicast_pkts),
        ("in_broadcast_pkts", c.in_broadcast_pkts),
        ("in_discards", c.in_discards),
        ("in_errors", c.in_errors),
        ("in_unknown_protos", c.in_unknown_protos),
        ("out_unicast_pkts", c.out_unicast_pkts),
        ("out_multicast_pkts", c.out_multicast_pkts),
        ("out_broadcast_pkts", c.out_broadcast_pkts),
        ("out_discards", c.out_discards),
        ("out_errors", c.out_errors),
        ("promiscuous_mode", c.promiscuous_mode),
        ("dot3_alignment_errors", c.dot3_alignment_errors),
        ("dot3_fcs_errors", c.dot3_fcs_errors),
        (
            "dot3_single_collision_frames",
            c.dot3_single_collision_frames,
        ),
        (
            "dot3_multiple_collision_frames",
            c.dot3_multiple_collision_frames,
        ),
        ("dot3_sqe_test_errors", c.dot3_sqe_test_errors),
        ("dot3_deferred_transmissions", c.dot3_deferred_transmissions),
        ("dot3_late_collisions", c.dot3_late_collisions),
        ("dot3_excessive_collisions", c.dot3_excessive_collisions),
        (
            "dot3_internal_mac_transmit_errors",
            c.dot3_internal_mac_transmit_errors,
        ),
        ("dot3_carrier_sense_errors", c.dot3_carrier_sense_errors),
        ("dot3_frame_too_longs", c.dot3_frame_too_longs),
        (
            "dot3_internal_mac_receive_errors",
            c.dot3_internal_mac_receive_errors,
        ),
        ("dot3_symbol_errors", c.dot3_symbol_errors),
    ] {
        o.insert(k.to_owned(), json!(v));
    }
    serde_json::Value::Object(o)
}

/// The change of the sFlow counters over this file (priming files excluded).
fn sflow_delta(now: &SflowStats, before: &SflowStats) -> SflowStats {
    let d = |a: u64, b: u64| a.saturating_sub(b);
    SflowStats {
        datagrams: d(now.datagrams, before.datagrams),
        flow_samples: d(now.flow_samples, before.flow_samples),
        counter_samples: d(now.counter_samples, before.counter_samples),
        unknown_samples: d(now.unknown_samples, before.unknown_samples),
        unknown_records: d(now.unknown_records, before.unknown_records),
        unknown_header_protocols: d(
            now.unknown_header_protocols,
            before.unknown_header_protocols,
        ),
        sequence_gaps: d(now.sequence_gaps, before.sequence_gaps),
        sequence_late: d(now.sequence_late, before.sequence_late),
        sequence_resets: d(now.sequence_resets, before.sequence_resets),
        agents_untracked: d(now.agents_untracked, before.agents_untracked),
        samples_dropped: d(now.samples_dropped, before.samples_dropped),
        sources_untracked: d(now.sources_untracked, before.sources_untracked),
    }
}

/// What the summary line reports.
struct Summary<'a> {
    capture: &'a Capture,
    /// Data sets still held for a template at the end of the file.
    waiting: usize,
    stats: &'a DecodeStats,
    sflow: &'a SflowStats,
    formats: &'a [u64; 5],
    primed_files: usize,
}

impl Summary<'_> {
    fn json(&self) -> serde_json::Value {
        let c = self.capture;
        let s = self.stats;
        let errors: serde_json::Map<_, _> = DecodeError::ALL
            .iter()
            .map(|e| (e.reason().to_owned(), json!(s.errors[e.index()])))
            .collect();
        let formats: serde_json::Map<_, _> = FORMATS
            .iter()
            .map(|f| (f.name().to_owned(), json!(self.formats[format_slot(*f)])))
            .collect();
        json!({
            "container": c.container.name(),
            "datagrams": s.datagrams,
            "formats": formats,
            "records": s.records,
            "errors": errors,
            "sets_held": s.sets_held,
            "held_sets_decoded": s.held_sets_decoded,
            "held_sets_expired": s.held_sets_expired,
            "held_sets_evicted": s.held_sets_evicted,
            "sets_without_template": s.sets_without_template,
            "templates_learned": s.templates_learned,
            "templates_withdrawn": s.templates_withdrawn,
            "templates_refused": s.templates_refused,
            "options_refused": s.options_refused,
            "primed_files": self.primed_files,
            "sets_waiting_for_template": self.waiting,
            "skipped_packets": {
                "fragments": c.skipped.fragments,
                "non_ip": c.skipped.non_ip,
                "non_udp": c.skipped.non_udp,
                "malformed": c.skipped.malformed,
                "truncated": c.skipped.truncated,
                "unsupported_link": c.skipped.unsupported_link,
            },
            "reassembled_datagrams": c.reassembled,
            "truncated_file": c.truncated_file,
            "sflow": {
                "datagrams": self.sflow.datagrams,
                "flow_samples": self.sflow.flow_samples,
                "counter_samples": self.sflow.counter_samples,
                "unknown_samples": self.sflow.unknown_samples,
                "unknown_records": self.sflow.unknown_records,
                "unknown_header_protocols": self.sflow.unknown_header_protocols,
                "sequence_gaps": self.sflow.sequence_gaps,
                "sequence_late": self.sflow.sequence_late,
                "sequence_resets": self.sflow.sequence_resets,
                "agent_drops": self.sflow.samples_dropped,
            },
        })
    }

    fn text(&self) -> String {
        let c = self.capture;
        let s = self.stats;
        let mut line = format!(
            "decode: {} {}, {} datagrams, {} records",
            c.container.name(),
            if c.truncated_file {
                "(cut short)"
            } else {
                "file"
            },
            s.datagrams,
            s.records
        );
        let formats: Vec<String> = FORMATS
            .iter()
            .filter(|f| self.formats[format_slot(**f)] > 0)
            .map(|f| format!("{}={}", f.name(), self.formats[format_slot(*f)]))
            .collect();
        if !formats.is_empty() {
            line += &format!(" ({})", formats.join(" "));
        }
        let errors: Vec<String> = DecodeError::ALL
            .iter()
            .filter(|e| s.errors[e.index()] > 0)
            .map(|e| format!("{}={}", e.reason(), s.errors[e.index()]))
            .collect();
        if errors.is_empty() {
            line += "; no errors";
        } else {
            line += &format!("; errors: {}", errors.join(" "));
        }
        line += &format!(
            "; templates learned={} withdrawn={} refused={} options refused={}; sets held={} \
             decoded later={} expired={} evicted={} without template={}",
            s.templates_learned,
            s.templates_withdrawn,
            s.templates_refused,
            s.options_refused,
            s.sets_held,
            s.held_sets_decoded,
            s.held_sets_expired,
            s.held_sets_evicted,
            s.sets_without_template,
        );
        let k = &c.skipped;
        if k.total() > 0 || c.reassembled > 0 {
            line += &format!(
                "; packets skipped: fragments={} non_ip={} non_udp={} malformed={} truncated={} \
                 unsupported_link={}; datagrams reassembled from fragments={}",
                k.fragments,
                k.non_ip,
                k.non_udp,
                k.malformed,
                k.truncated,
                k.unsupported_link,
                c.reassembled
            );
        }
        let f = self.sflow;
        if f.datagrams > 0 {
            line += &format!(
                "; sflow flow samples={} counter samples={} unknown skipped={} sequence gaps={} \
                 late={} resets={} agent drops={}",
                f.flow_samples,
                f.counter_samples,
                f.unknown_samples + f.unknown_records,
                f.sequence_gaps,
                f.sequence_late,
                f.sequence_resets,
                f.samples_dropped
            );
        }
        if self.primed_files > 0 {
            line += &format!("; after priming with {} file(s)", self.primed_files);
        }
        if self.waiting > 0 {
            line += &format!(
                "; {} data set(s) still wait for a template that this file never sent: give the \
                 exporter's template capture with --prime",
                self.waiting
            );
        }
        line
    }
}

/// Counters of the decoded file only: totals minus what the priming files contributed.
fn delta(now: &DecodeStats, before: &DecodeStats) -> DecodeStats {
    let mut errors = now.errors;
    for (e, b) in errors.iter_mut().zip(before.errors) {
        *e = e.saturating_sub(b);
    }
    DecodeStats {
        datagrams: now.datagrams.saturating_sub(before.datagrams),
        records: now.records.saturating_sub(before.records),
        errors,
        sets_without_template: now
            .sets_without_template
            .saturating_sub(before.sets_without_template),
        sets_held: now.sets_held.saturating_sub(before.sets_held),
        held_sets_decoded: now
            .held_sets_decoded
            .saturating_sub(before.held_sets_decoded),
        held_sets_expired: now
            .held_sets_expired
            .saturating_sub(before.held_sets_expired),
        held_sets_evicted: now
            .held_sets_evicted
            .saturating_sub(before.held_sets_evicted),
        templates_learned: now
            .templates_learned
            .saturating_sub(before.templates_learned),
        templates_withdrawn: now
            .templates_withdrawn
            .saturating_sub(before.templates_withdrawn),
        templates_dropped: now
            .templates_dropped
            .saturating_sub(before.templates_dropped),
        exporters_expired: now
            .exporters_expired
            .saturating_sub(before.exporters_expired),
        exporters_evicted: now
            .exporters_evicted
            .saturating_sub(before.exporters_evicted),
        templates_refused: now
            .templates_refused
            .saturating_sub(before.templates_refused),
        options_refused: now.options_refused.saturating_sub(before.options_refused),
    }
}

const FORMATS: [FlowFormat; 4] = [
    FlowFormat::NetflowV5,
    FlowFormat::NetflowV9,
    FlowFormat::Ipfix,
    FlowFormat::Sflow,
];

fn format_slot(f: FlowFormat) -> usize {
    match f {
        FlowFormat::NetflowV5 => 0,
        FlowFormat::NetflowV9 => 1,
        FlowFormat::Ipfix => 2,
        FlowFormat::Sflow => 3,
        FlowFormat::Unknown => 4,
    }
}
