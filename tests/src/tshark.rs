//! tshark as an oracle: one run per capture, PDML output, read into per-frame flow records.
//!
//! PDML (not `-T json`) because it keeps what JSON loses: the order of fields, their byte
//! position, and the display name, which is the only place tshark says that a value belongs to
//! an RFC 5103 *reverse* information element (it reuses the forward field name, e.g.
//! `cflow.octets` with display name `Octets: 128 (Reverse Type 1 BYTES)`).
//!
//! What is read, per frame: the export header (version, count, sysUptime, export seconds,
//! source id / observation domain), then every set with its id, the templates it defines, whether
//! tshark could decode it, and its records; for NetFlow v5 the `pdu i/N` records. Whether tshark
//! marked the frame malformed is kept as well.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// One field of a record as tshark shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    /// Abbreviated name (`cflow.octets`).
    pub name: String,
    /// Display line (`Octets: 62`).
    pub showname: String,
    /// Display value (`62`, `0x18`, `Oct  5, 2009 06:06:07.492059999 UTC`).
    pub show: String,
    /// The field's bytes on the wire, in hex (empty for generated fields).
    pub value: String,
}

/// One flow record (a v9/IPFIX `Flow N` or a v5 `pdu i/N`).
#[derive(Clone, Debug, Default)]
pub struct Record {
    /// Every `cflow.*` field inside the record, nested ones included, in wire order.
    pub fields: Vec<Field>,
}

/// One set / FlowSet.
#[derive(Clone, Debug, Default)]
pub struct Set {
    /// Set id (0/1 v9 templates, 2/3 IPFIX templates, >= 256 data).
    pub id: u16,
    /// Template ids this set defines (template and options template sets).
    pub defines: Vec<u16>,
    /// tshark found data but no template for it.
    pub no_template: bool,
    /// Records tshark decoded from this set.
    pub records: Vec<Record>,
    /// The set length from its header, in bytes.
    pub length: usize,
}

/// The flow export found in one frame.
#[derive(Clone, Debug, Default)]
pub struct Export {
    /// 5, 9 or 10.
    pub version: u16,
    /// Header count (v5/v9 records or FlowSets; absent for IPFIX).
    pub count: Option<u32>,
    /// v5/v9 sysUptime in milliseconds.
    pub sys_uptime_ms: Option<u64>,
    /// Export time, Unix seconds.
    pub unix_secs: Option<u64>,
    /// v5 residual nanoseconds.
    pub unix_nsecs: Option<u64>,
    /// v9 source id / IPFIX observation domain.
    pub domain: Option<u32>,
    /// Sets in wire order; for v5 a single pseudo-set with id 0 holding the records.
    pub sets: Vec<Set>,
    /// Every `cflow.*` field of the header (nested ones included), e.g. v5 `cflow.engine_id`,
    /// `cflow.samplerate`.
    pub header: Record,
}

/// One frame of the capture.
#[derive(Clone, Debug, Default)]
pub struct Frame {
    /// 1-based frame number.
    pub number: usize,
    /// The cflow layer, if tshark found one.
    pub export: Option<Export>,
    /// tshark flagged the frame (or part of it) as malformed.
    pub malformed: bool,
}

/// Runs `tshark -r capture -T pdml`, dissecting every port in `cflow_ports` as NetFlow/IPFIX.
///
/// # Errors
///
/// tshark is missing or fails, or its output is not PDML.
pub fn dissect(capture: &Path, cflow_ports: &[u16]) -> Result<Vec<Frame>> {
    let mut args: Vec<String> = vec!["-O".into(), "cflow".into()];
    for p in cflow_ports {
        args.push("-d".into());
        args.push(format!("udp.port=={p},cflow"));
    }
    let text = pdml(capture, &args)?;
    parse_pdml(&text).with_context(|| format!("parse tshark PDML for {}", capture.display()))
}

/// `tshark -n -r CAPTURE -T pdml ARGS...` in UTC: its output.
fn pdml(capture: &Path, args: &[String]) -> Result<String> {
    crate::env::require_tool("tshark")?;
    let out = Command::new("tshark")
        .env("TZ", "UTC")
        .arg("-n")
        .arg("-r")
        .arg(capture)
        .args(["-T", "pdml"])
        .args(args)
        .output()
        .with_context(|| format!("run tshark on {}", capture.display()))?;
    if !out.status.success() {
        bail!(
            "tshark failed on {}: {}",
            capture.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Reads tshark's PDML.
///
/// # Errors
///
/// The text is not well-formed XML.
pub fn parse_pdml(text: &str) -> Result<Vec<Frame>> {
    Ok(walk_pdml(text, "cflow", parse_cflow)?
        .into_iter()
        .map(|(number, export, malformed)| Frame {
            number,
            export,
            malformed,
        })
        .collect())
}

/// Every packet of tshark's PDML as (frame number, the first `layer` proto parsed by `parse`,
/// whether tshark flagged anything in it as malformed).
fn walk_pdml<T>(
    text: &str,
    layer: &str,
    parse: impl Fn(roxmltree::Node<'_, '_>) -> T,
) -> Result<Vec<(usize, Option<T>, bool)>> {
    let doc = roxmltree::Document::parse_with_options(
        text,
        roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        },
    )?;
    let mut frames = Vec::new();
    for (i, packet) in doc
        .root_element()
        .children()
        .filter(|n| n.has_tag_name("packet"))
        .enumerate()
    {
        let (mut number, mut parsed, mut malformed) = (i + 1, None, false);
        for proto in packet.children().filter(|n| n.has_tag_name("proto")) {
            match proto.attribute("name") {
                Some("geninfo") => {
                    if let Some(n) = find_field(proto, "num").and_then(|s| s.parse().ok()) {
                        number = n;
                    }
                }
                Some(name) if name == layer && parsed.is_none() => parsed = Some(parse(proto)),
                Some("_ws.malformed") => malformed = true,
                _ => {}
            }
            if proto
                .descendants()
                .any(|n| n.attribute("name") == Some("_ws.malformed"))
            {
                malformed = true;
            }
        }
        frames.push((number, parsed, malformed));
    }
    Ok(frames)
}

fn find_field(node: roxmltree::Node<'_, '_>, name: &str) -> Option<String> {
    node.descendants()
        .find(|n| n.has_tag_name("field") && n.attribute("name") == Some(name))
        .and_then(|n| n.attribute("show").map(str::to_owned))
}

fn parse_cflow(proto: roxmltree::Node<'_, '_>) -> Export {
    let mut e = Export::default();
    let mut v5 = Set::default();
    for f in proto.children().filter(|n| n.has_tag_name("field")) {
        let name = f.attribute("name").unwrap_or("");
        let show = f.attribute("show").unwrap_or("");
        if name.starts_with("cflow.") {
            e.header.fields.extend(parse_record(f).fields);
        }
        match name {
            "cflow.version" => e.version = parse_num(show).unwrap_or(0) as u16,
            "cflow.count" => e.count = parse_num(show).map(|c| c as u32),
            "cflow.sysuptime" => e.sys_uptime_ms = parse_secs_ms(show),
            "cflow.source_id" | "cflow.od_id" => e.domain = parse_num(show).map(|d| d as u32),
            "cflow.timestamp" => {
                e.unix_secs = find_field(f, "cflow.unix_secs").and_then(|s| parse_num(&s));
                e.unix_nsecs = find_field(f, "cflow.unix_nsecs").and_then(|s| parse_num(&s));
                if e.unix_secs.is_none() {
                    e.unix_secs = parse_abs_time_ms(show).map(|ms| ms / 1_000);
                }
            }
            "" if show.starts_with("pdu ") => v5.records.push(parse_record(f)),
            "" if show.starts_with("FlowSet ") || show.starts_with("Set ") => {
                e.sets.push(parse_set(f, show));
            }
            _ => {}
        }
    }
    if e.version == 5 {
        e.sets.push(v5);
    }
    e
}

fn parse_set(node: roxmltree::Node<'_, '_>, label: &str) -> Set {
    let mut set = Set {
        id: label_id(label).unwrap_or(0),
        ..Set::default()
    };
    for f in node.children().filter(|n| n.has_tag_name("field")) {
        let name = f.attribute("name").unwrap_or("");
        let show = f.attribute("show").unwrap_or("");
        if name == "cflow.flowset_id" {
            if let Some(id) = parse_num(show) {
                set.id = id as u16;
            }
        } else if name == "cflow.flowset_length" {
            set.length = parse_num(show).unwrap_or(0) as usize;
        } else if name.is_empty() && show.starts_with("Flow ") {
            set.records.push(parse_record(f));
        } else if name.is_empty() && show.contains("no template found") {
            set.no_template = true;
        } else if name.is_empty()
            && show.contains("Template")
            && let Some(id) = find_field(f, "cflow.template_id").and_then(|s| parse_num(&s))
        {
            set.defines.push(id as u16);
        }
    }
    set
}

/// `FlowSet 3 [id=256] (1 flows)` -> 256.
fn label_id(label: &str) -> Option<u16> {
    let start = label.find("[id=")? + 4;
    let rest = &label[start..];
    let end = rest.find(']')?;
    rest[..end].parse().ok()
}

fn parse_record(node: roxmltree::Node<'_, '_>) -> Record {
    let fields = node
        .descendants()
        .filter(|n| n.has_tag_name("field"))
        .filter_map(|n| {
            let name = n.attribute("name")?;
            if !name.starts_with("cflow.") {
                return None;
            }
            Some(Field {
                name: name.to_owned(),
                showname: n.attribute("showname").unwrap_or("").to_owned(),
                show: n.attribute("show").unwrap_or("").to_owned(),
                value: n.attribute("value").unwrap_or("").to_owned(),
            })
        })
        .collect();
    Record { fields }
}

impl Set {
    /// A (v9 or IPFIX) template or options template set.
    pub fn is_template_set(&self) -> bool {
        self.id < 256
    }

    /// An options template set (v9 FlowSet 1, IPFIX set 3).
    pub fn is_options_template_set(&self) -> bool {
        self.id == 1 || self.id == 3
    }
}

impl Record {
    /// The value of the last forward (not RFC 5103 reverse) occurrence of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .rev()
            .find(|f| f.name == name && !f.is_reverse())
            .map(|f| f.show.as_str())
    }

    /// The last forward occurrence of `name` whose display line satisfies `keep`.
    pub fn get_where(&self, name: &str, keep: impl Fn(&Field) -> bool) -> Option<&str> {
        self.fields
            .iter()
            .rev()
            .find(|f| f.name == name && !f.is_reverse() && keep(f))
            .map(|f| f.show.as_str())
    }

    /// The first of `names` that the record holds, parsed as an unsigned number.
    pub fn num(&self, names: &[&str]) -> Option<u64> {
        names.iter().find_map(|n| self.get(n)).and_then(parse_num)
    }

    /// An address field.
    pub fn addr(&self, name: &str) -> Option<IpAddr> {
        let s = self.get(name)?;
        if let Ok(v4) = s.parse::<Ipv4Addr>() {
            return Some(IpAddr::V4(v4));
        }
        s.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
    }

    /// Names of fields that occur more than once (forward only) with different values.
    pub fn ambiguous(&self, names: &[&str]) -> Vec<String> {
        let mut out = Vec::new();
        for n in names {
            let mut vals: Vec<&str> = self
                .fields
                .iter()
                .filter(|f| f.name == *n && !f.is_reverse())
                .map(|f| f.show.as_str())
                .collect();
            vals.dedup();
            if vals.len() > 1 {
                out.push(format!("{n}={vals:?}"));
            }
        }
        out
    }
}

impl Field {
    /// tshark marks RFC 5103 reverse information elements only in the display name.
    pub fn is_reverse(&self) -> bool {
        self.showname.contains("Reverse")
    }

    /// The wire bytes are all zero (or the field is generated and has none).
    pub fn is_zero(&self) -> bool {
        self.value.bytes().all(|b| b == b'0')
    }
}

/// Parses a decimal or `0x` hexadecimal unsigned number.
pub fn parse_num(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Parses tshark's relative time `944948.659000000` (seconds) into milliseconds, truncating.
pub fn parse_secs_ms(s: &str) -> Option<u64> {
    let s = s.trim();
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: u64 = secs.parse().ok()?;
    let mut ms = 0u64;
    for (i, c) in frac
        .chars()
        .chain(std::iter::repeat('0'))
        .take(3)
        .enumerate()
    {
        let d = c.to_digit(10)?;
        ms += u64::from(d) * [100, 10, 1][i];
    }
    secs.checked_mul(1_000)?.checked_add(ms)
}

/// Parses tshark's absolute time `Oct  5, 2009 06:06:07.492059999 UTC` (run with `TZ=UTC`) into
/// Unix milliseconds, truncating below the millisecond.
pub fn parse_abs_time_ms(s: &str) -> Option<u64> {
    let mut it = s.split_whitespace();
    let month = it.next()?;
    let day: u32 = it.next()?.trim_end_matches(',').parse().ok()?;
    let year: i64 = it.next()?.parse().ok()?;
    let clock = it.next()?;
    if it.next() != Some("UTC") {
        return None;
    }
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let m = MONTHS.iter().position(|x| *x == month)? as u32 + 1;
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
    let mut parts = hms.split(':');
    let h: u64 = parts.next()?.parse().ok()?;
    let mi: u64 = parts.next()?.parse().ok()?;
    let sec: u64 = parts.next()?.parse().ok()?;
    let ms = parse_secs_ms(&format!("0.{frac}"))?;
    let days = u64::try_from(days_from_civil(year, m, day)).ok()?;
    Some((days * 86_400 + h * 3_600 + mi * 60 + sec) * 1_000 + ms)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (the usual era-based computation).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

// ---------------------------------------------------------------------------------------------
// sFlow: tshark's `sflow` dissector (fields `sflow_245.*`, `sflow_5.*`, `sflow.*`), with the
// sampled packet header dissected by the ordinary `eth` / `vlan` / `mpls` / `ip` / `ipv6` /
// `tcp` / `udp` / `icmp` / `icmpv6` dissectors, nested inside the raw header record.

/// One frame of an sFlow capture.
#[derive(Clone, Debug, Default)]
pub struct SflowFrame {
    /// 1-based frame number.
    pub number: usize,
    /// The sFlow layer, if tshark found one.
    pub datagram: Option<SflowDatagram>,
    /// tshark flagged the frame (or part of it) as malformed.
    pub malformed: bool,
}

/// One sFlow datagram as tshark decoded it.
#[derive(Clone, Debug, Default)]
pub struct SflowDatagram {
    /// The header fields (`sflow_245.version`, `.agent`, `.sub_agent_id`, ...).
    pub header: Record,
    /// Samples in wire order.
    pub samples: Vec<SflowSample>,
}

/// One sample.
#[derive(Clone, Debug, Default)]
pub struct SflowSample {
    /// tshark's label (`Flow sample, seq 1`, `Expanded counters sample, seq 2`, ...).
    pub label: String,
    /// `sflow_245.sampletype` (1 flow, 2 counters, 3 expanded flow, 4 expanded counters).
    pub format: Option<u64>,
    /// `sflow.enterprise` of the sample.
    pub enterprise: Option<u64>,
    /// The sample's own fields (not those of its records).
    pub fields: Record,
    /// Flow or counter records in wire order.
    pub records: Vec<SflowRecord>,
}

/// One flow or counter record.
#[derive(Clone, Debug, Default)]
pub struct SflowRecord {
    /// tshark's label (`Raw packet header`, `Extended gateway data`, ...).
    pub label: String,
    /// `sflow_245.flow_record_format` or `sflow_245.counters_record_format`.
    pub format: Option<u64>,
    /// `sflow.enterprise` of the record.
    pub enterprise: Option<u64>,
    /// Every named field inside the record in wire order, those of the dissected packet
    /// header (`ip.src`, `tcp.flags`, ...) included.
    pub fields: Record,
    /// `sflow_245.dstAS` values inside AS path segments (`sflow.as_type`) only: tshark 4.0
    /// shows the communities under the same field name.
    pub as_path: Vec<u64>,
}

/// Runs `tshark -r capture -T pdml` and reads its sFlow layers.
///
/// # Errors
///
/// tshark is missing or fails, or its output is not PDML.
pub fn dissect_sflow(capture: &Path) -> Result<Vec<SflowFrame>> {
    let text = pdml(capture, &[])?;
    parse_sflow_pdml(&text).with_context(|| format!("parse tshark PDML for {}", capture.display()))
}

/// Reads tshark's PDML for sFlow frames.
///
/// # Errors
///
/// The text is not well-formed XML.
pub fn parse_sflow_pdml(text: &str) -> Result<Vec<SflowFrame>> {
    Ok(walk_pdml(text, "sflow", parse_sflow)?
        .into_iter()
        .map(|(number, datagram, malformed)| SflowFrame {
            number,
            datagram,
            malformed,
        })
        .collect())
}

fn parse_sflow(proto: roxmltree::Node<'_, '_>) -> SflowDatagram {
    let mut d = SflowDatagram::default();
    for f in proto.children().filter(|n| n.has_tag_name("field")) {
        let name = f.attribute("name").unwrap_or("");
        if name.is_empty() {
            d.samples.push(parse_sflow_sample(f));
        } else {
            d.header.fields.push(field_of(f));
        }
    }
    d
}

fn parse_sflow_sample(node: roxmltree::Node<'_, '_>) -> SflowSample {
    let mut s = SflowSample {
        label: node.attribute("show").unwrap_or("").to_owned(),
        ..SflowSample::default()
    };
    for f in node.children().filter(|n| n.has_tag_name("field")) {
        let name = f.attribute("name").unwrap_or("");
        if name.is_empty() {
            s.records.push(parse_sflow_record(f));
            continue;
        }
        // The field and its sub-fields (`output_interface` holds `_format` and `_value`).
        for n in f.descendants().filter(|n| n.has_tag_name("field")) {
            if n.attribute("name").is_some_and(|x| !x.is_empty()) {
                s.fields.fields.push(field_of(n));
            }
        }
    }
    s.format = s.fields.num(&["sflow_245.sampletype"]);
    s.enterprise = s.fields.num(&["sflow.enterprise"]);
    s
}

fn parse_sflow_record(node: roxmltree::Node<'_, '_>) -> SflowRecord {
    let mut r = SflowRecord {
        label: node.attribute("show").unwrap_or("").to_owned(),
        ..SflowRecord::default()
    };
    for n in node.descendants().filter(|n| n.has_tag_name("field")) {
        let Some(name) = n.attribute("name").filter(|x| !x.is_empty()) else {
            continue;
        };
        r.fields.fields.push(field_of(n));
        let in_path = n
            .ancestors()
            .skip(1)
            .take_while(|a| *a != node)
            .any(|a| a.attribute("name") == Some("sflow.as_type"));
        if name == "sflow_245.dstAS"
            && in_path
            && let Some(v) = n.attribute("show").and_then(parse_num)
        {
            r.as_path.push(v);
        }
    }
    r.format = r.fields.num(&[
        "sflow_245.flow_record_format",
        "sflow_245.counters_record_format",
    ]);
    r.enterprise = r.fields.num(&["sflow.enterprise"]);
    r
}

fn field_of(n: roxmltree::Node<'_, '_>) -> Field {
    Field {
        name: n.attribute("name").unwrap_or("").to_owned(),
        showname: n.attribute("showname").unwrap_or("").to_owned(),
        show: n.attribute("show").unwrap_or("").to_owned(),
        value: n.attribute("value").unwrap_or("").to_owned(),
    }
}

impl Record {
    /// The value of the first occurrence of `name` (wire order), forward or not.
    pub fn first(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.show.as_str())
    }

    /// Position of the first occurrence of `name` in wire order.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| f.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_times() {
        assert_eq!(parse_secs_ms("944948.659000000"), Some(944_948_659));
        assert_eq!(parse_secs_ms("12"), Some(12_000));
        assert_eq!(
            parse_abs_time_ms("Jan  1, 1970 00:00:01.500000000 UTC"),
            Some(1_500)
        );
        // 2009-10-05 06:06:07 UTC = 1254722767.
        assert_eq!(
            parse_abs_time_ms("Oct  5, 2009 06:06:07.492059999 UTC"),
            Some(1_254_722_767_492)
        );
        assert_eq!(parse_abs_time_ms("Oct  5, 2009 06:06:07 CET"), None);
    }

    #[test]
    fn parses_numbers() {
        assert_eq!(parse_num("0x18"), Some(24));
        assert_eq!(parse_num("133"), Some(133));
        assert_eq!(parse_num("x"), None);
        assert_eq!(label_id("FlowSet 3 [id=256] (1 flows)"), Some(256));
    }
}
