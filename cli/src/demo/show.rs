//! The live part of the demo, once the processes run: wait until every sidecar holds a
//! certificate and has applied the mesh, say who is who, let the traffic begin, edit the policy
//! on [`story::plan`]'s schedule, print what [`Story`] makes of each observation, and sum up.
//! Ends after the duration or when a stop is asked for; a process that dies is an error.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;

use super::lines::{self, Line};
use super::mesh_file::{self, Layout};
use super::observer::{Event, SiteSpec, Sites};
use super::story::{self, PolicyStep, Story};
use super::{Backing, Out, Role, Stop};
use crate::admin_api::Identity;
use crate::style::Style;

/// How long the sidecars may take, all together, to be ready once their processes run.
const READY_TIMEOUT: Duration = Duration::from_secs(40);
/// The longest the loop waits for an observation before it looks at the clock again.
const TICK: Duration = Duration::from_millis(100);

/// What the show runs on.
#[derive(Debug)]
pub struct Setup<'a> {
    /// Where to observe each workload from.
    pub sites: &'a [SiteSpec],
    /// The mesh file to edit.
    pub mesh_file: &'a Path,
    /// The addresses to write it with.
    pub layout: &'a Layout,
    /// The processes, to notice one dying.
    pub backing: &'a Backing,
    /// How long the traffic runs.
    pub duration: Duration,
}

/// Runs the show; returns when it is over (or stopped), with the observer threads joined.
pub fn show(setup: &Setup<'_>, out: &Out, stop: &Stop) -> anyhow::Result<()> {
    let p = &out.palette;
    let (tx, rx) = mpsc::channel();
    let mut sites = Sites::start(setup.sites, &tx).context("starting the observer threads")?;
    drop(tx);
    let identities = out.step(
        "waiting for the sidecars to apply the mesh (endpoints, the backend's policy)",
        || wait_ready(&rx, setup, stop).map(|ids| (ids, String::new())),
    )?;
    for role in [Role::Frontend, Role::Backend, Role::Intruder] {
        let (Some(id), Some(site)) = (
            identities.get(&role),
            setup.sites.iter().find(|s| s.role == role),
        ) else {
            continue;
        };
        out.line(&format!(
            "{} {:<8} {}  serial {}  at {}",
            p.paint(Style::Good, "✔"),
            role.name(),
            p.paint(Style::Strong, &id.spiffe_id),
            lines::short_serial(&id.serial),
            site.place
        ))?;
    }
    out.line(&format!(
        "policy shop/{}: only {} may reach the backend on :{} (mesh file {})",
        mesh_file::POLICY,
        Role::Frontend.short_id(),
        setup.layout.app_port,
        setup.mesh_file.display()
    ))?;
    out.line(&p.paint(
        Style::Strong,
        &format!(
            "traffic: the frontend and the intruder call the backend every second for {} (Ctrl-C stops)",
            humantime::format_duration(setup.duration)
        ),
    ))?;

    let mut story = Story::new(&identities);
    let plan = story::plan(setup.duration);
    let mut next_edit = plan.iter().peekable();
    sites.go();
    let started = Instant::now();
    let mut checked = Instant::now();
    loop {
        let now = started.elapsed();
        if stop.requested() {
            out.line(&p.paint(Style::Warn, "interrupted"))?;
            break;
        }
        if now >= setup.duration {
            break;
        }
        if let Some((_, step)) = next_edit.next_if(|(at, _)| now >= *at) {
            let line = edit_policy(setup, &mut story, *step, now)?;
            out.line(&line.render(p))?;
            continue;
        }
        if checked.elapsed() >= Duration::from_millis(500) {
            checked = Instant::now();
            if let Err(e) = setup.backing.check_alive() {
                if stop.requested_soon() {
                    out.line(&p.paint(Style::Warn, "interrupted"))?;
                    break;
                }
                anyhow::bail!(e);
            }
        }
        let until_edit = next_edit
            .peek()
            .map_or(TICK, |(at, _)| at.saturating_sub(now));
        let wait = TICK.min(until_edit).min(setup.duration.saturating_sub(now));
        let event = match rx.recv_timeout(wait) {
            Ok(event) => event,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => {
                anyhow::bail!("every observer thread has stopped")
            }
        };
        let at = started.elapsed();
        let lines = match event {
            Event::Identity { role, identity } => {
                story.identity(role, &identity, at).into_iter().collect()
            }
            Event::Records {
                role: Role::Backend,
                records,
            } => story.backend_records(&records, at),
            Event::MeshApplied {
                role: Role::Backend,
                seen,
            } => {
                story.mesh_applied(seen);
                Vec::new()
            }
            Event::Records { .. } | Event::Ready { .. } | Event::MeshApplied { .. } => Vec::new(),
            Event::Trouble { role, message } => {
                story.trouble(role, &message, at).into_iter().collect()
            }
            Event::Failed { role, message } => anyhow::bail!("{}: {message}", role.name()),
        };
        for line in lines {
            out.line(&line.render(p))?;
        }
    }
    let shown = started.elapsed();
    sites.stop();
    for line in story.summary(shown, p) {
        out.line(&line)?;
    }
    Ok(())
}

/// Collects every sidecar's `Ready`, within [`READY_TIMEOUT`].
fn wait_ready(
    rx: &mpsc::Receiver<Event>,
    setup: &Setup<'_>,
    stop: &Stop,
) -> anyhow::Result<BTreeMap<Role, Identity>> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut ready = BTreeMap::new();
    while ready.len() < setup.sites.len() {
        if stop.requested() {
            anyhow::bail!("interrupted while starting");
        }
        if let Err(e) = setup.backing.check_alive() {
            if stop.requested_soon() {
                anyhow::bail!("interrupted while starting");
            }
            anyhow::bail!(e);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            anyhow::bail!(
                "the sidecars were not all ready within {}s",
                READY_TIMEOUT.as_secs()
            );
        }
        match rx.recv_timeout(left.min(TICK)) {
            Ok(Event::Ready { role, identity }) => {
                ready.insert(role, identity);
            }
            Ok(Event::Failed { role, message }) => anyhow::bail!("{}: {message}", role.name()),
            Ok(_) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                anyhow::bail!("every observer thread has stopped")
            }
        }
    }
    Ok(ready)
}

/// Rewrites the mesh file with `step`'s policy; the line saying so.
fn edit_policy(
    setup: &Setup<'_>,
    story: &mut Story,
    step: PolicyStep,
    at: Duration,
) -> anyhow::Result<Line> {
    let text = mesh_file::render(setup.layout, step);
    mesh_file::write(setup.mesh_file, &text)
        .with_context(|| format!("rewriting the mesh file {}", setup.mesh_file.display()))?;
    Ok(story.policy_edit(step, at, SystemTime::now()))
}
