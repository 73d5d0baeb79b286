//! Cost of choosing a Service endpoint for a new connection (`balance::pick`), which every
//! connection to a ClusterIP pays: 3 and 100 ready endpoints with connections in flight, and
//! the retry path (one endpoint already tried, the rest filtered).

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use trellis_proxy::balance::pick;
use trellis_proxy::services::{Endpoint, EndpointLoad, Health, ServicePort};

fn port(n: usize) -> (ServicePort, Vec<trellis_proxy::services::LoadGuard>) {
    let endpoints: Vec<Endpoint> = (0..n)
        .map(|i| Endpoint {
            addr: SocketAddr::from(([198, 18, (i / 250) as u8, (i % 250) as u8 + 1], 8080)),
            health: if i % 10 == 9 {
                Health::Unavailable
            } else {
                Health::Ready
            },
            load: Arc::new(EndpointLoad::default()),
        })
        .collect();
    // Some connections in flight, unevenly.
    let guards = endpoints
        .iter()
        .enumerate()
        .flat_map(|(i, e)| (0..i % 4).map(|_| e.load.start()).collect::<Vec<_>>())
        .collect();
    (ServicePort::new(80, "http".into(), endpoints), guards)
}

fn bench(c: &mut Criterion) {
    for n in [3usize, 100] {
        let (p, _guards) = port(n);
        let mut r = 0u32;
        c.bench_function(&format!("pick of {n} endpoints"), |b| {
            b.iter(|| {
                r = r.wrapping_add(0x9e37_79b9);
                black_box(pick(black_box(&p), &[], r, r.rotate_left(7)))
            })
        });
    }
    let (p, _guards) = port(100);
    let tried = [p.endpoints[0].addr];
    c.bench_function("pick of 100 endpoints, one already tried", |b| {
        let mut r = 0u32;
        b.iter(|| {
            r = r.wrapping_add(0x9e37_79b9);
            black_box(pick(black_box(&p), &tried, r, r.rotate_left(7)))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
