//! Services as the proxy holds them: a ClusterIP:port stands for a list of endpoints (pod IP
//! and resolved target port, with their EndpointSlice conditions). Each endpoint carries the
//! live load of its address ([`EndpointLoad`]: connections in flight and how fast tunnels to it
//! open), shared by every Service that lists the address and kept across discovery updates, so
//! the balancer ([`crate::balance`]) reads it without a lookup.
//!
//! Owns: [`ServiceEntry`], [`ServicePort`], [`Endpoint`], [`Health`], [`EndpointLoad`] and the
//! [`Loads`] registry that hands out one load per address.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Whether an endpoint may take new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Ready: takes new connections.
    Ready,
    /// Terminating but still serving: takes new connections only when no endpoint is ready.
    Draining,
    /// Not serving: takes none.
    Unavailable,
}

impl Health {
    /// From EndpointSlice conditions.
    pub fn from_conditions(ready: bool, serving: bool, terminating: bool) -> Health {
        if ready {
            Health::Ready
        } else if serving && terminating {
            Health::Draining
        } else {
            Health::Unavailable
        }
    }
}

/// The live load of one endpoint address.
#[derive(Debug, Default)]
pub struct EndpointLoad {
    /// Connections opening or open to it now.
    active: AtomicU32,
    /// Exponentially weighted moving average of the time to open a tunnel stream to it, in
    /// microseconds (0: not measured yet).
    open_ewma_us: AtomicU32,
    /// When the last sample was folded in, in milliseconds since [`epoch`]: the average
    /// fades with age (see [`faded_us`]).
    sampled_at_ms: AtomicU32,
}

impl EndpointLoad {
    /// Weight of a new sample in the moving average (a short memory: ~3 samples).
    const ALPHA: f64 = 0.3;

    /// Connections in flight.
    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    /// The moving average of tunnel open latency, in microseconds (0: none yet), faded by the
    /// age of its last sample: an endpoint that lost every tie on one slow open is not chosen,
    /// so it takes no new sample; without fading it would be starved for good by a quiet client.
    pub fn open_ewma_us(&self) -> u32 {
        let age_ms = now_ms().saturating_sub(self.sampled_at_ms.load(Ordering::Relaxed));
        faded_us(self.open_ewma_us.load(Ordering::Relaxed), age_ms)
    }

    /// The average as last folded in, not faded.
    #[cfg(test)]
    pub fn unfaded_us(&self) -> u32 {
        self.open_ewma_us.load(Ordering::Relaxed)
    }

    /// Counts a connection until the guard drops.
    pub fn start(self: &Arc<Self>) -> LoadGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        LoadGuard { load: self.clone() }
    }

    /// Folds in how long opening a connection took.
    pub fn observe_open(&self, took: Duration) {
        let sample = u32::try_from(took.as_micros()).unwrap_or(u32::MAX);
        let old = self.open_ewma_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            (f64::from(old) * (1.0 - Self::ALPHA) + f64::from(sample) * Self::ALPHA) as u32
        };
        self.open_ewma_us.store(new.max(1), Ordering::Relaxed);
        self.sampled_at_ms.store(now_ms(), Ordering::Relaxed);
    }
}

/// How long it takes an unrefreshed open-latency average to halve.
pub const OPEN_LATENCY_HALF_LIFE_MS: u32 = 500;

/// `ewma_us` faded by `age_ms`: halved every [`OPEN_LATENCY_HALF_LIFE_MS`], kept at 1 (still
/// "measured") rather than 0. A slow open costs its endpoint new connections for about a second
/// (5 ms fades under the 1 ms tie-break floor in ~1.2 s), not forever.
pub fn faded_us(ewma_us: u32, age_ms: u32) -> u32 {
    if ewma_us == 0 {
        return 0;
    }
    let halvings = f64::from(age_ms) / f64::from(OPEN_LATENCY_HALF_LIFE_MS);
    ((f64::from(ewma_us) * 0.5_f64.powf(halvings)) as u32).max(1)
}

/// Milliseconds since the first call in this process (wraps after 49 days; an age computed
/// across the wrap saturates to 0, which only delays fading once).
fn now_ms() -> u32 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    epoch.elapsed().as_millis() as u32
}

/// A connection counted in an [`EndpointLoad`]; uncounts it on drop.
#[derive(Debug)]
pub struct LoadGuard {
    /// The load it counts in.
    load: Arc<EndpointLoad>,
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.load.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One endpoint of a Service port.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Pod IP and resolved target port: the CONNECT target (or the passthrough destination).
    pub addr: SocketAddr,
    /// Whether it takes new connections.
    pub health: Health,
    /// Its live load.
    pub load: Arc<EndpointLoad>,
}

/// One port of a Service, with its endpoints grouped by health for the balancer.
#[derive(Debug, Clone)]
pub struct ServicePort {
    /// The Service port.
    pub port: u16,
    /// Its name ("" for a single unnamed port).
    pub name: String,
    /// Every endpoint, in the control plane's order.
    pub endpoints: Vec<Endpoint>,
    /// Indexes of the ready endpoints.
    pub ready: Vec<usize>,
    /// Indexes of the terminating-but-serving endpoints.
    pub draining: Vec<usize>,
}

impl ServicePort {
    /// A port with `endpoints`, indexed by health.
    pub fn new(port: u16, name: String, endpoints: Vec<Endpoint>) -> ServicePort {
        let with = |h: Health| {
            endpoints
                .iter()
                .enumerate()
                .filter(|(_, e)| e.health == h)
                .map(|(i, _)| i)
                .collect()
        };
        ServicePort {
            port,
            name,
            ready: with(Health::Ready),
            draining: with(Health::Draining),
            endpoints,
        }
    }
}

/// A Service: its ClusterIPs and ports.
#[derive(Debug, Clone)]
pub struct ServiceEntry {
    /// `namespace/name`.
    pub name: String,
    /// Its ClusterIPs.
    pub addresses: Vec<IpAddr>,
    /// Its ports.
    pub ports: Vec<ServicePort>,
}

/// Hands out one [`EndpointLoad`] per endpoint address, so that every Service listing the
/// address, and every discovery update, shares it.
#[derive(Debug, Default)]
pub struct Loads {
    /// Loads by address.
    by_addr: HashMap<SocketAddr, Arc<EndpointLoad>>,
}

impl Loads {
    /// The load of `addr`.
    pub fn of(&mut self, addr: SocketAddr) -> Arc<EndpointLoad> {
        self.by_addr.entry(addr).or_default().clone()
    }

    /// Forgets loads that no Service holds any more and no connection counts in.
    pub fn prune(&mut self) {
        self.by_addr.retain(|_, l| Arc::strong_count(l) > 1);
    }

    /// Addresses known.
    pub fn len(&self) -> usize {
        self.by_addr.len()
    }

    /// Whether none is known.
    pub fn is_empty(&self) -> bool {
        self.by_addr.is_empty()
    }
}

impl Health {
    /// `ready`, `draining` or `unavailable`, as `/config_dump` shows it.
    pub fn label(self) -> &'static str {
        match self {
            Health::Ready => "ready",
            Health::Draining => "draining",
            Health::Unavailable => "unavailable",
        }
    }
}

/// The Services as `/config_dump` shows them, sorted by name: ClusterIPs, and per port the
/// endpoints with their health and connections in flight — so a person (or a test) can see
/// which endpoints this proxy balances over. Borrowed from the state and serialized as it
/// stands: at 10,000 endpoints a `serde_json::Value` of it took ~6 MB (twice, as `json!`
/// copies it), more than the state itself.
pub fn dump<'a>(services: impl Iterator<Item = &'a ServiceEntry>) -> Vec<ServiceDump<'a>> {
    let mut all: Vec<ServiceDump<'a>> = services
        .map(|s| ServiceDump {
            name: &s.name,
            addresses: &s.addresses,
            ports: s
                .ports
                .iter()
                .map(|p| PortDump {
                    port: p.port,
                    name: &p.name,
                    endpoints: p
                        .endpoints
                        .iter()
                        .map(|e| EndpointDump {
                            addr: e.addr,
                            health: e.health.label(),
                            active: e.load.active(),
                        })
                        .collect(),
                })
                .collect(),
        })
        .collect();
    all.sort_by(|a, b| a.name.cmp(b.name));
    all
}

/// One Service in `/config_dump`.
#[derive(Debug, serde::Serialize)]
pub struct ServiceDump<'a> {
    /// `namespace/name`.
    name: &'a str,
    /// Its ClusterIPs.
    addresses: &'a [IpAddr],
    /// Its ports.
    ports: Vec<PortDump<'a>>,
}

/// One Service port in `/config_dump`.
#[derive(Debug, serde::Serialize)]
struct PortDump<'a> {
    /// The port.
    port: u16,
    /// Its name.
    name: &'a str,
    /// Its endpoints.
    endpoints: Vec<EndpointDump>,
}

/// One endpoint in `/config_dump`.
#[derive(Debug, serde::Serialize)]
struct EndpointDump {
    /// Pod IP and target port.
    addr: SocketAddr,
    /// `ready`, `draining` or `unavailable`.
    health: &'static str,
    /// Connections in flight.
    active: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(addr: &str, health: Health) -> Endpoint {
        Endpoint {
            addr: addr.parse().unwrap(),
            health,
            load: Arc::default(),
        }
    }

    #[test]
    fn the_dump_lists_services_by_name_with_each_endpoint_and_its_health() {
        let service = |name: &str, vip: &str, endpoints| ServiceEntry {
            name: name.into(),
            addresses: vec![vip.parse().unwrap()],
            ports: vec![ServicePort::new(80, "http".into(), endpoints)],
        };
        let b = service(
            "shop/backend",
            "198.19.0.10",
            vec![
                endpoint("198.18.0.3:8080", Health::Ready),
                endpoint("198.18.0.5:8081", Health::Draining),
                endpoint("198.18.0.6:8080", Health::Unavailable),
            ],
        );
        let a = service("shop/a", "198.19.0.11", Vec::new());
        let _held = b.ports[0].endpoints[0].load.start();
        let dump = serde_json::to_value(dump([&b, &a].into_iter())).unwrap();
        assert_eq!(dump[0]["name"], "shop/a");
        assert_eq!(dump[0]["ports"][0]["endpoints"], serde_json::json!([]));
        assert_eq!(dump[1]["addresses"], serde_json::json!(["198.19.0.10"]));
        let port = &dump[1]["ports"][0];
        assert_eq!(
            (port["port"].as_u64(), port["name"].as_str()),
            (Some(80), Some("http"))
        );
        let endpoints: Vec<(&str, &str, u64)> = port["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["addr"].as_str().unwrap(),
                    e["health"].as_str().unwrap(),
                    e["active"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            endpoints,
            [
                ("198.18.0.3:8080", "ready", 1),
                ("198.18.0.5:8081", "draining", 0),
                ("198.18.0.6:8080", "unavailable", 0)
            ]
        );
    }
}
