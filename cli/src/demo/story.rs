//! The demo's timeline, as pure functions: when the policy changes ([`plan`]), and which line
//! each observation makes ([`Story`]) — an allowed or refused connection from a backend pod's
//! records, a certificate rotation from a changed serial, a policy edit, when the backends'
//! sidecars applied it and the first decision made under it — and the summary at the end,
//! with which backend pod the callers' sidecars chose for each connection to the Service. No
//! I/O and no clock: times come in as arguments, so every rule is tested below.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use super::lines::{Handshaking, Line};
use super::mesh_file::SERVICE;
use super::{Replica, Role};
use crate::admin_api::{Handshake, Identity};
use crate::style::{Palette, Style};

/// The backend's policy at one step of the story.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyStep {
    /// Enforce; only the frontend is allowed.
    FrontendOnly,
    /// Enforce; the frontend and the intruder are allowed.
    AlsoIntruder,
    /// Audit: only the frontend is allowed, but what would be refused passes (and is recorded).
    Audit,
}

impl PolicyStep {
    /// The workloads the policy allows.
    pub fn allowed(self) -> &'static [Role] {
        match self {
            PolicyStep::FrontendOnly | PolicyStep::Audit => &[Role::Frontend],
            PolicyStep::AlsoIntruder => &[Role::Frontend, Role::Intruder],
        }
    }

    /// `enforce` or `audit`, as the policy's `spec.mode` says it.
    pub fn mode(self) -> &'static str {
        match self {
            PolicyStep::Audit => "audit",
            PolicyStep::FrontendOnly | PolicyStep::AlsoIntruder => "enforce",
        }
    }

    /// The backend's decision for the intruder under this policy (a record's `decision`).
    pub fn intruder_decision(self) -> &'static str {
        match self {
            PolicyStep::FrontendOnly => "deny",
            PolicyStep::AlsoIntruder => "allow",
            PolicyStep::Audit => "would-deny",
        }
    }

    /// What the edit does, for its line.
    pub(super) fn edit(self) -> &'static str {
        match self {
            PolicyStep::FrontendOnly => "back to enforce mode, allowing only ns/shop/sa/frontend",
            PolicyStep::AlsoIntruder => "allow ns/evil/sa/intruder too",
            PolicyStep::Audit => {
                "audit mode: allow only ns/shop/sa/frontend, but refuse nothing — record would-deny"
            }
        }
    }

    /// What the edit changes for the intruder, for the line saying it took effect.
    pub(super) fn effect(self) -> &'static str {
        match self {
            PolicyStep::FrontendOnly => "the intruder is refused again",
            PolicyStep::AlsoIntruder => "the intruder is now allowed",
            PolicyStep::Audit => "the intruder passes, recorded as would-deny",
        }
    }
}

/// When the demo edits the policy, counted from the start of the traffic: a quarter of the way
/// in it also allows the intruder, at half it switches to audit mode, at three quarters it goes
/// back to the first policy (only the frontend, enforced).
pub fn plan(show: Duration) -> [(Duration, PolicyStep); 3] {
    [
        (show / 4, PolicyStep::AlsoIntruder),
        (show / 2, PolicyStep::Audit),
        (show * 3 / 4, PolicyStep::FrontendOnly),
    ]
}

/// An edit not yet seen in effect.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// To what.
    step: PolicyStep,
    /// When the file was written (wall clock, to compare with record times).
    written: SystemTime,
}

/// One policy edit, as it went.
#[derive(Debug, Clone)]
struct Edit {
    /// When the file was written.
    written: SystemTime,
    /// The backend pods whose sidecars were seen applying a new mesh since.
    applied_by: BTreeSet<Replica>,
    /// From then to the last backend sidecar applying the new mesh.
    applied: Option<Duration>,
    /// From then to the first decision under the new policy.
    decided: Option<Duration>,
}

/// What happened so far, and what to print next.
#[derive(Debug, Default)]
pub struct Story {
    /// Serial of each sidecar's current certificate.
    serials: BTreeMap<Replica, String>,
    /// How many backend pods there are (an edit is applied once all of them have it).
    backends: usize,
    /// The backend pods by Service endpoint address (`podIP:targetPort`).
    endpoints: BTreeMap<String, Replica>,
    /// The tunnels each backend pod has seen, by peer address: the first connection on each
    /// paid the handshake, later ones rode it.
    tunnels: BTreeSet<(Replica, String)>,
    /// The last edit, until a connection decided under it is seen.
    pending: Option<Pending>,
    /// Every edit, and how long the backend's sidecar took to apply it.
    edits: Vec<Edit>,
    /// Connections the backend allowed, per caller.
    allowed: BTreeMap<Role, u32>,
    /// Connections it refused, per caller.
    refused: BTreeMap<Role, u32>,
    /// Connections audit mode let through.
    would_deny: BTreeMap<Role, u32>,
    /// Records from nobody we know (plaintext, or another identity).
    others: u32,
    /// The callers' connections to the Service, by the backend pod their sidecar chose (its
    /// name, or the address when it is no pod of ours).
    chosen: BTreeMap<String, u32>,
    /// The callers' outbound connections that did not go through the Service's balancing.
    not_via_service: u32,
    /// Certificate rotations per sidecar.
    rotations: BTreeMap<Replica, u32>,
    /// Pods whose trouble was reported and has not cleared.
    troubled: BTreeSet<Replica>,
}

impl Story {
    /// A story whose sidecars start with these certificates, with the backend pods at these
    /// Service endpoint addresses.
    pub fn new(
        identities: &BTreeMap<Replica, Identity>,
        endpoints: &[(Replica, std::net::SocketAddr)],
    ) -> Self {
        Story {
            serials: identities
                .iter()
                .map(|(r, id)| (*r, id.serial.clone()))
                .collect(),
            backends: endpoints.len(),
            endpoints: endpoints.iter().map(|(r, a)| (a.to_string(), *r)).collect(),
            ..Story::default()
        }
    }

    /// A sidecar's current identity: a rotation if its serial changed.
    pub fn identity(&mut self, replica: Replica, id: &Identity, at: Duration) -> Option<Line> {
        self.troubled.remove(&replica);
        let old = self.serials.insert(replica, id.serial.clone())?;
        if old == id.serial {
            return None;
        }
        *self.rotations.entry(replica).or_default() += 1;
        Some(Line::Rotated {
            at,
            who: replica.name(),
            old,
            new: id.serial.clone(),
            generation: id.generation,
            valid_for: id.seconds_left,
        })
    }

    /// New records of a sidecar (oldest first): a caller's are counted by the backend pod its
    /// sidecar chose; a backend pod's make a line for each inbound connection, and one when the
    /// first connection decided by the latest policy edit shows up.
    pub fn records(&mut self, replica: Replica, records: &[Handshake], at: Duration) -> Vec<Line> {
        self.troubled.remove(&replica);
        if replica.role != Role::Backend {
            self.caller_records(records);
            return Vec::new();
        }
        let to = Role::Backend.spiffe_id();
        let pod = replica.name();
        let mut lines = Vec::new();
        for r in records
            .iter()
            .filter(|r| r.direction.starts_with("inbound"))
        {
            let caller = r.peer_id.as_deref().and_then(role_of);
            let from = r
                .peer_id
                .clone()
                .unwrap_or_else(|| format!("{} (no identity)", r.peer_addr));
            let dst = r.dst.clone().unwrap_or_else(|| "?".to_owned());
            let count = |map: &mut BTreeMap<Role, u32>, others: &mut u32| match caller {
                Some(c) => *map.entry(c).or_default() += 1,
                None => *others += 1,
            };
            match r.decision.as_str() {
                "allow" => {
                    count(&mut self.allowed, &mut self.others);
                    let handshake = match &r.tls {
                        None => Handshaking::None,
                        Some(_) if !self.tunnels.insert((replica, r.peer_addr.clone())) => {
                            Handshaking::Reused
                        }
                        Some(t) if t.reused => Handshaking::Reused,
                        Some(t) => Handshaking::Paid(t.handshake_ms),
                    };
                    lines.push(Line::Allowed {
                        at,
                        from,
                        to: to.clone(),
                        pod: pod.clone(),
                        dst,
                        tls: r
                            .tls
                            .as_ref()
                            .map(|t| (t.version.clone(), t.cipher.clone())),
                        handshake,
                    });
                }
                "would-deny" => {
                    count(&mut self.would_deny, &mut self.others);
                    self.tunnels.insert((replica, r.peer_addr.clone()));
                    lines.push(Line::WouldDeny {
                        at,
                        from,
                        to: to.clone(),
                        pod: pod.clone(),
                        dst,
                        reason: r.reason.clone(),
                    });
                }
                _ => {
                    count(&mut self.refused, &mut self.others);
                    self.tunnels.insert((replica, r.peer_addr.clone()));
                    lines.push(Line::Refused {
                        at,
                        from,
                        to: to.clone(),
                        pod: pod.clone(),
                        dst,
                        reason: r.reason.clone(),
                    });
                }
            }
            if caller == Some(Role::Intruder)
                && let Some(line) = self.seen_in_effect(r, at)
            {
                lines.push(line);
            }
        }
        lines
    }

    /// A caller's outbound records: which backend pod its sidecar chose for each connection to
    /// the Service (allowed there or not).
    fn caller_records(&mut self, records: &[Handshake]) {
        let via = format!("via Service {SERVICE}:");
        for r in records.iter().filter(|r| r.direction == "outbound") {
            if !r.reason.starts_with(&via) {
                self.not_via_service += 1;
                continue;
            }
            let dst = r.dst.clone().unwrap_or_else(|| "?".to_owned());
            let pod = self.endpoints.get(&dst).map_or(dst, |p| p.name());
            *self.chosen.entry(pod).or_default() += 1;
        }
    }

    /// The demo rewrote the mesh file at `at` (wall clock `written`) with `step`.
    pub fn policy_edit(&mut self, step: PolicyStep, at: Duration, written: SystemTime) -> Line {
        self.pending = Some(Pending { step, written });
        self.edits.push(Edit {
            written,
            applied_by: BTreeSet::new(),
            applied: None,
            decided: None,
        });
        Line::PolicyEdit { at, step }
    }

    /// A backend pod's sidecar applied a new mesh snapshot, seen at wall-clock `seen`: the
    /// latest edit is applied once every backend pod's sidecar did so after it.
    pub fn mesh_applied(&mut self, replica: Replica, seen: SystemTime) {
        let backends = self.backends.max(1);
        if let Some(edit) = self.edits.last_mut()
            && edit.applied.is_none()
            && let Ok(after) = seen.duration_since(edit.written)
        {
            edit.applied_by.insert(replica);
            if edit.applied_by.len() >= backends {
                edit.applied = Some(after);
            }
        }
    }

    /// A pod's admin endpoint failed: said once, until it answers again.
    pub fn trouble(&mut self, replica: Replica, message: &str, at: Duration) -> Option<Line> {
        self.troubled.insert(replica).then(|| Line::Trouble {
            at,
            who: replica.name(),
            message: message.to_owned(),
        })
    }

    /// The summary lines after `shown` of traffic; `kube_proxy` is how many connections the
    /// node's DNAT took for the Service, where there is a node.
    pub fn summary(&self, shown: Duration, p: &Palette, kube_proxy: Option<u64>) -> Vec<String> {
        let per =
            |map: &BTreeMap<Role, u32>| tally(map.iter().map(|(r, n)| (r.name().to_owned(), *n)));
        let per_pod = |map: &BTreeMap<Replica, u32>| tally(map.iter().map(|(r, n)| (r.name(), *n)));
        let applied: Vec<String> = self
            .edits
            .iter()
            .map(|e| {
                e.applied
                    .map_or_else(|| "?".to_owned(), |d| format!("{:.2} s", d.as_secs_f64()))
            })
            .collect();
        let mut lines = vec![
            p.paint(
                Style::Strong,
                &format!("summary of {:.1} s of traffic:", shown.as_secs_f64()),
            ),
            format!(
                "  {}     {}",
                p.paint(Style::Good, "✔ allowed"),
                per(&self.allowed)
            ),
            format!(
                "  {}     {}",
                p.paint(Style::Bad, "✘ refused"),
                per(&self.refused)
            ),
            format!(
                "  {}  {}",
                p.paint(Style::Warn, "‼ would-deny"),
                per(&self.would_deny)
            ),
            format!(
                "  ⇄ via Service {SERVICE}  {}: the callers' sidecars chose the pod",
                tally(self.chosen.iter().map(|(k, n)| (k.clone(), *n)))
            ),
            format!("  ↻ certificate rotations  {}", per_pod(&self.rotations)),
            format!(
                "  ✎ policy edits  {}{}",
                self.edits.len(),
                if applied.is_empty() {
                    String::new()
                } else {
                    format!(
                        ": the backends' sidecars had each {} after the edit",
                        applied.join(", ")
                    )
                }
            ),
        ];
        if let Some(n) = kube_proxy {
            lines.push(format!(
                "  kube-proxy (the node's DNAT for the ClusterIP) took {n} of them"
            ));
        }
        if self.not_via_service > 0 {
            lines.push(format!(
                "  callers' connections not balanced by their sidecar  {}",
                self.not_via_service
            ));
        }
        if self.others > 0 {
            lines.push(format!("  other connections  {}", self.others));
        }
        lines
    }

    /// How many certificate rotations were seen.
    #[cfg(test)]
    fn rotation_count(&self) -> u32 {
        self.rotations.values().sum()
    }

    fn seen_in_effect(&mut self, r: &Handshake, at: Duration) -> Option<Line> {
        let pending = self.pending?;
        if r.decision != pending.step.intruder_decision() {
            return None;
        }
        let decided = humantime::parse_rfc3339(&r.time).ok()?;
        let decided = decided.duration_since(pending.written).ok()?;
        self.pending = None;
        let edit = self.edits.last_mut()?;
        edit.decided = Some(decided);
        Some(Line::InEffect {
            at,
            step: pending.step,
            applied: edit.applied,
            decided,
        })
    }
}

/// `total (a n, b m)`, or `0`.
fn tally(counts: impl Iterator<Item = (String, u32)>) -> String {
    let counts: Vec<(String, u32)> = counts.collect();
    let total: u32 = counts.iter().map(|(_, n)| n).sum();
    if counts.is_empty() {
        return "0".to_owned();
    }
    let parts: Vec<String> = counts.iter().map(|(k, n)| format!("{k} {n}")).collect();
    format!("{total} ({})", parts.join(", "))
}

/// Which sample workload a SPIFFE ID is.
fn role_of(spiffe_id: &str) -> Option<Role> {
    Role::ALL.into_iter().find(|r| r.spiffe_id() == spiffe_id)
}

#[cfg(test)]
#[path = "story_tests.rs"]
mod tests;
