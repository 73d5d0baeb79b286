//! What a control-plane run does: the mesh sizes (P pods, S Services), the watching proxies
//! (W), the churn (R pod changes per second for a while), for `--quick` and the full run.
//!
//! Owns: [`Plan`] and [`Scenario`]. The full run is the issue's: P = 10,000, S = 1,000,
//! W = 2,000, R = 20/s, and the same at P = 1,000 (S = 100: ten pods per Service in both, so
//! that a change carries the same Service either way and only P differs).

use std::time::Duration;

use serde::Serialize;

/// One mesh size.
#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    /// Meshed pods.
    pub pods: usize,
    /// Services (pods / services each).
    pub services: usize,
    /// Simulated proxies watching.
    pub watchers: usize,
}

/// A run.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// `quick` or `full`.
    pub mode: &'static str,
    /// Mesh sizes, smallest first.
    pub scenarios: Vec<Scenario>,
    /// Pod changes per second.
    pub rate: f64,
    /// How long the churn lasts.
    #[serde(serialize_with = "secs")]
    pub churn: Duration,
    /// Longest the restart storm (all proxies certifying and syncing) may take.
    #[serde(serialize_with = "secs")]
    pub storm_limit: Duration,
    /// After the churn, how long the last changes may take to reach every proxy.
    #[serde(serialize_with = "secs")]
    pub drain_limit: Duration,
    /// Only the restart storm (after one proxy alone): no sidecar, no churn (`--only storm`).
    pub storm_only: bool,
    /// The storm's proxies stop once certified (`--only certify`): what Certify alone costs.
    pub certify_only: bool,
    /// Extra flags for the control plane (`--control-plane-arg`), e.g. to compare its limits.
    pub control_plane_args: Vec<String>,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl Plan {
    /// The CI smoke: seconds of churn on a small mesh.
    pub fn quick() -> Self {
        Self {
            mode: "quick",
            scenarios: vec![Scenario {
                pods: 400,
                services: 40,
                watchers: 100,
            }],
            rate: 20.0,
            churn: Duration::from_secs(5),
            storm_limit: Duration::from_secs(60),
            drain_limit: Duration::from_secs(10),
            storm_only: false,
            certify_only: false,
            control_plane_args: Vec::new(),
        }
    }

    /// The run.
    pub fn full() -> Self {
        Self {
            mode: "full",
            scenarios: vec![
                Scenario {
                    pods: 1_000,
                    services: 100,
                    watchers: 2_000,
                },
                Scenario {
                    pods: 10_000,
                    services: 1_000,
                    watchers: 2_000,
                },
            ],
            rate: 20.0,
            churn: Duration::from_secs(60),
            storm_limit: Duration::from_secs(180),
            drain_limit: Duration::from_secs(30),
            storm_only: false,
            certify_only: false,
            control_plane_args: Vec::new(),
        }
    }
}
