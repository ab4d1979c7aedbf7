//! Receive on loopback, io_uring against recvmmsg, at the same offered load: each iteration
//! sends a burst of 64 NetFlow v5 datagrams (30 records, 1464 bytes each) to one socket and
//! reads them all back through the backend. The sending cost is the same for both; the
//! difference is the receive path.
//!
//! `cargo bench -p flowplane-benches --bench receive`

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use flowplane::r#gen::wire::Format;
use flowplane_benches::datagram;
use flowplane_engine::ReceiveBackend;
use flowplane_engine::receive::{Receiver, io_uring_usable};

const BURST: usize = 64;

fn receive(c: &mut Criterion) {
    let mut g = c.benchmark_group("receive_loopback");
    g.throughput(Throughput::Elements(BURST as u64));
    let datagram = datagram(Format::V5, 1, 30, 10_000, false);

    let mut backends = vec![("recvmmsg", ReceiveBackend::Recvmmsg)];
    match io_uring_usable() {
        Ok(()) => backends.push(("io_uring", ReceiveBackend::IoUring)),
        Err(why) => eprintln!("io_uring not measured: {why}"),
    }
    for (name, backend) in backends {
        let rx_sock = UdpSocket::bind("127.0.0.1:0").expect("bind receiver");
        rx_sock.set_nonblocking(true).expect("non-blocking");
        let to = rx_sock.local_addr().expect("address");
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind sender");
        let mut rx = Receiver::new(backend, &[rx_sock.as_raw_fd()], 64).expect("receiver");
        assert_eq!(rx.backend(), backend);
        g.bench_function(format!("{name}_burst_of_{BURST}_v5_datagrams"), |b| {
            b.iter(|| {
                for _ in 0..BURST {
                    tx.send_to(&datagram, to).expect("send");
                }
                let mut got = 0;
                let mut bytes = 0;
                let deadline = Instant::now() + Duration::from_secs(2);
                while got < BURST {
                    assert!(
                        Instant::now() < deadline,
                        "{name}: {got} of {BURST} arrived"
                    );
                    got += rx
                        .recv(Duration::from_millis(100), |_, p| bytes += p.len())
                        .expect("receive");
                }
                assert_eq!(bytes, BURST * datagram.len());
            });
        });
    }
    g.finish();
}

criterion_group!(benches, receive);
criterion_main!(benches);
