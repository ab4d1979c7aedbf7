//! tshark as a second reader of the generator's datagrams (`flowplane::gen::wire`): what it
//! decodes must be what the flows said, field by field, with nothing flagged malformed.
//!
//! flowplane's own decoder is checked against the same datagrams in the module's unit tests;
//! this keeps the encoder honest about the specifications rather than about flowplane.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::{Context, Result, ensure};
use flowplane::r#gen::wire::{Encoder, Flow, Format, frame_length, stamp};
use flowplane_tests::pcap_out::{UdpOut, write_udp_pcap};
use flowplane_tests::tshark::Record;
use flowplane_tests::{env, tshark};

/// Flow `i`: TCP or UDP in turn, IPv6 every other one when `v6` is allowed.
fn flow(i: u32, v6: bool) -> Flow {
    let (src, dst) = if v6 && i % 2 == 1 {
        (
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i as u16 + 1)),
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1)),
        )
    } else {
        (
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, i as u8 + 1)),
            IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)),
        )
    };
    let tcp = i % 3 != 2;
    Flow {
        src,
        dst,
        src_port: 40_000 + i as u16,
        dst_port: if tcp { 443 } else { 53 },
        protocol: if tcp { 6 } else { 17 },
        tcp_flags: if tcp { 0x12 } else { 0 },
        tos: 0x20,
        input_if: 3 + i,
        output_if: 9,
        packets: u64::from(i + 1),
        octets: u64::from(i + 1) * 700,
    }
}

/// Writes the template (if any) and one stamped data datagram to a pcap for tshark.
fn capture(format: Format, flows: &[Flow], port: u16) -> Result<std::path::PathBuf> {
    let enc = Encoder::new(format, 4);
    let mut datagrams = Vec::new();
    if let Some(mut t) = enc.template() {
        stamp(format, &mut t, 0, 1_767_300_000, 60_000);
        datagrams.push(t);
    }
    let mut d = enc.data(flows)?;
    stamp(format, &mut d, 1, 1_767_300_001, 61_000);
    datagrams.push(d);

    let dir = env::scratch_dir(&format!("gen-wire-{format:?}"))?;
    let pcap = dir.join("gen.pcap");
    let from: SocketAddr = "127.0.0.6:50000".parse()?;
    let to = SocketAddr::new("127.0.0.1".parse()?, port);
    write_udp_pcap(
        &pcap,
        datagrams.iter().enumerate().map(|(i, d)| UdpOut {
            ts_ms: 1_767_300_000_000 + i as u64,
            src: from,
            dst: to,
            payload: d,
        }),
    )?;
    Ok(pcap)
}

fn check_netflow(format: Format, flows: &[Flow]) -> Result<()> {
    let frames = tshark::dissect(&capture(format, flows, 2055)?, &[2055])?;
    let mut records: Vec<&Record> = Vec::new();
    for f in &frames {
        ensure!(!f.malformed, "{format:?}: tshark flags frame {}", f.number);
        let e = f.export.as_ref().context("no flow export")?;
        for s in &e.sets {
            ensure!(
                !s.no_template,
                "{format:?}: tshark has no template for set {}",
                s.id
            );
            records.extend(s.records.iter());
        }
    }

    // v9 and IPFIX: the IPv4 set, then the IPv6 set.
    let mut want = flows.to_vec();
    want.sort_by_key(|f| f.src.is_ipv6());
    ensure!(
        records.len() == want.len(),
        "{format:?}: {} records",
        records.len()
    );
    for (r, f) in records.iter().zip(&want) {
        let addr = |v4: &str, v6: &str| r.addr(v4).or_else(|| r.addr(v6));
        let num = |names: &[&str]| r.num(names);
        let got = (
            addr("cflow.srcaddr", "cflow.srcaddrv6"),
            addr("cflow.dstaddr", "cflow.dstaddrv6"),
            num(&["cflow.srcport"]),
            num(&["cflow.dstport"]),
            num(&["cflow.protocol"]),
            num(&["cflow.inputint"]),
            num(&["cflow.outputint"]),
            num(&["cflow.octets", "cflow.octets64"]),
            num(&["cflow.packets", "cflow.packets64"]),
        );
        let expect = (
            Some(f.src),
            Some(f.dst),
            Some(u64::from(f.src_port)),
            Some(u64::from(f.dst_port)),
            Some(u64::from(f.protocol)),
            Some(u64::from(f.input_if)),
            Some(u64::from(f.output_if)),
            Some(f.octets),
            Some(f.packets),
        );
        ensure!(
            got == expect,
            "{format:?}: tshark read {got:?}, the flow was {expect:?}; fields {:?}",
            r.fields.iter().map(|x| &x.name).collect::<Vec<_>>()
        );
    }
    Ok(())
}

#[test]
fn tshark_reads_the_generated_netflow_and_ipfix() -> Result<()> {
    env::require_tool("tshark")?;
    let v4: Vec<Flow> = (0..24).map(|i| flow(i, false)).collect();
    let mixed: Vec<Flow> = (0..24).map(|i| flow(i, true)).collect();
    check_netflow(Format::V5, &v4)?;
    check_netflow(Format::V9, &mixed)?;
    check_netflow(Format::Ipfix, &mixed)
}

#[test]
fn tshark_reads_the_generated_sflow() -> Result<()> {
    env::require_tool("tshark")?;
    let flows: Vec<Flow> = (0..24).map(|i| flow(i, true)).collect();
    let frames = tshark::dissect_sflow(&capture(Format::Sflow, &flows, 6343)?)?;
    ensure!(frames.len() == 1, "{} frames", frames.len());
    ensure!(!frames[0].malformed, "tshark flags the sFlow frame");
    let d = frames[0].datagram.as_ref().context("no sFlow datagram")?;
    ensure!(
        d.samples.len() == flows.len(),
        "{} samples",
        d.samples.len()
    );

    for (s, f) in d.samples.iter().zip(&flows) {
        ensure!(s.format == Some(1), "sample format {:?}", s.format);
        let h = &s.records.first().context("no record")?.fields;
        let l4 = if f.protocol == 6 { "tcp" } else { "udp" };
        let got = (
            h.addr("ip.src").or_else(|| h.addr("ipv6.src")),
            h.addr("ip.dst").or_else(|| h.addr("ipv6.dst")),
            h.num(&[&format!("{l4}.srcport")]),
            h.num(&[&format!("{l4}.dstport")]),
            h.num(&["sflow_245.header.frame_length"]),
        );
        let expect = (
            Some(f.src),
            Some(f.dst),
            Some(u64::from(f.src_port)),
            Some(u64::from(f.dst_port)),
            Some(u64::from(frame_length(f))),
        );
        ensure!(
            got == expect,
            "tshark read {got:?}, the flow was {expect:?}; fields {:?}",
            h.fields.iter().map(|x| &x.name).collect::<Vec<_>>()
        );
    }
    Ok(())
}
