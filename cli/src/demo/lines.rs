//! How each line of the demo's story reads: an allowed or refused connection with both SPIFFE
//! IDs and the backend pod that decided, a rotation, a policy edit and its effect. [`Line`] holds the facts; [`Line::render`]
//! lays them out, in colour when the palette says so. Deciding which lines to print is
//! [`super::story`]'s business.

use std::time::Duration;

use super::story::PolicyStep;
use crate::style::{Palette, Style};

/// Whether a connection paid for a TLS handshake or rode an open tunnel.
#[derive(Debug, Clone, PartialEq)]
pub enum Handshaking {
    /// The first connection on a tunnel: its handshake took this many milliseconds.
    Paid(f64),
    /// A later connection on the same tunnel: no handshake.
    Reused,
    /// Plaintext.
    None,
}

/// One line of the story; `at` is the time since the traffic started.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    /// The backend let a connection in.
    Allowed {
        /// When it was seen.
        at: Duration,
        /// The caller's SPIFFE ID, as the backend verified it.
        from: String,
        /// The backend's SPIFFE ID.
        to: String,
        /// The backend pod whose sidecar decided (`backend-1`).
        pod: String,
        /// The address its sidecar was asked for: the pod's IP and target port.
        dst: String,
        /// TLS version and cipher suite.
        tls: Option<(String, String)>,
        /// Handshake or reuse.
        handshake: Handshaking,
    },
    /// The backend refused one, with its reason.
    Refused {
        /// When it was seen.
        at: Duration,
        /// The caller's SPIFFE ID (or address, for plaintext).
        from: String,
        /// The backend's SPIFFE ID.
        to: String,
        /// The backend pod whose sidecar decided (`backend-1`).
        pod: String,
        /// The address its sidecar was asked for: the pod's IP and target port.
        dst: String,
        /// The backend's record's reason.
        reason: String,
    },
    /// An audit-mode policy would have refused it; it passed.
    WouldDeny {
        /// When it was seen.
        at: Duration,
        /// The caller's SPIFFE ID.
        from: String,
        /// The backend's SPIFFE ID.
        to: String,
        /// The backend pod whose sidecar decided (`backend-1`).
        pod: String,
        /// The address its sidecar was asked for: the pod's IP and target port.
        dst: String,
        /// The backend's record's reason.
        reason: String,
    },
    /// A sidecar's certificate changed.
    Rotated {
        /// When it was seen.
        at: Duration,
        /// Whose (the pod's name).
        who: String,
        /// The old serial.
        old: String,
        /// The new serial.
        new: String,
        /// How many certificates it has had.
        generation: u64,
        /// Seconds left on the new one.
        valid_for: u64,
    },
    /// The demo rewrote the mesh file.
    PolicyEdit {
        /// When.
        at: Duration,
        /// To what.
        step: PolicyStep,
    },
    /// The first connection decided by the new policy.
    InEffect {
        /// When it was seen.
        at: Duration,
        /// Which policy.
        step: PolicyStep,
        /// From the edit to the last backend sidecar applying it, if that was seen.
        applied: Option<Duration>,
        /// From the edit to the backend's first decision under it (record time).
        decided: Duration,
    },
    /// A workload could not be observed.
    Trouble {
        /// When.
        at: Duration,
        /// Which pod.
        who: String,
        /// What went wrong.
        message: String,
    },
}

impl Line {
    /// The line as printed, without a newline.
    pub fn render(&self, p: &Palette) -> String {
        let time = |at: &Duration| p.paint(Style::Faint, &format!("{:>6.1}s", at.as_secs_f64()));
        match self {
            Line::Allowed {
                at,
                from,
                to,
                pod,
                dst,
                tls,
                handshake,
            } => {
                let tls = tls
                    .as_ref()
                    .map_or_else(|| "plaintext".to_owned(), |(v, c)| format!("{v} {c}"));
                let hs = match handshake {
                    Handshaking::Paid(ms) => format!("(handshake {ms:.1} ms)"),
                    Handshaking::Reused => "(reused)".to_owned(),
                    Handshaking::None => String::new(),
                };
                format!(
                    "{} {} {from} → {to} on {} ({dst})  {tls} {}",
                    time(at),
                    p.paint(Style::Good, "✔ allowed"),
                    p.paint(Style::Strong, pod),
                    p.paint(Style::Faint, &hs)
                )
            }
            Line::Refused {
                at,
                from,
                to,
                pod,
                dst,
                reason,
            } => format!(
                "{} {} {from} → {to} on {pod} ({dst}): {reason}",
                time(at),
                p.paint(Style::Bad, "✘ refused"),
            ),
            Line::WouldDeny {
                at,
                from,
                to,
                pod,
                dst,
                reason,
            } => format!(
                "{} {} {from} → {to} on {pod} ({dst}): {reason}",
                time(at),
                p.paint(Style::Warn, "‼ would-deny, let through (audit)"),
            ),
            Line::Rotated {
                at,
                who,
                old,
                new,
                generation,
                valid_for,
            } => format!(
                "{} {} {} serial {} → {} (certificate #{generation}, valid for {valid_for} s)",
                time(at),
                p.paint(Style::Strong, "↻ certificate rotated:"),
                who,
                short_serial(old),
                short_serial(new),
            ),
            Line::PolicyEdit { at, step } => format!(
                "{} {} shop/backend-allow: {} — mesh file rewritten; no restart",
                time(at),
                p.paint(Style::Strong, "✎ policy updated:"),
                step.edit(),
            ),
            Line::InEffect {
                at,
                step,
                applied,
                decided,
            } => {
                let applied = applied.map_or_else(String::new, |a| {
                    format!(
                        "the backends' sidecars had it {:.2} s after the edit; ",
                        a.as_secs_f64()
                    )
                });
                format!(
                    "{} {} {} ({applied}first call under it {:.2} s after the edit)",
                    time(at),
                    p.paint(Style::Strong, "✎ policy in effect:"),
                    step.effect(),
                    decided.as_secs_f64(),
                )
            }
            Line::Trouble { at, who, message } => format!(
                "{} {} {who}: {message}",
                time(at),
                p.paint(Style::Warn, "‼"),
            ),
        }
    }
}

/// At most this many hex digits of a serial are shown.
const SERIAL_DIGITS: usize = 12;

/// A serial cut to [`SERIAL_DIGITS`] digits with an ellipsis when longer.
pub fn short_serial(serial: &str) -> String {
    match serial.get(..SERIAL_DIGITS) {
        Some(head) if serial.len() > SERIAL_DIGITS + 2 => format!("{head}…"),
        _ => serial.to_owned(),
    }
}
