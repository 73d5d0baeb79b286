//! The live part of the demo, once the processes run: wait until every sidecar holds a
//! certificate and has applied the mesh (the callers' with the Service and its endpoints), say
//! who is who, let the traffic begin, edit the policy on [`story::plan`]'s schedule, print what
//! [`Story`] makes of each observation, and sum up. Ends after the duration or when a stop is
//! asked for; a process that dies is an error.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;

use super::lines::{self, Line};
use super::mesh_file::{self, Layout, SERVICE, SERVICE_HOST};
use super::observer::{Event, SiteSpec, Sites};
use super::story::{self, PolicyStep, Story};
use super::{Backing, Out, Replica, Role, Stop};
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
        "waiting for the sidecars to apply the mesh (pods, the Service's endpoints, the backends' policy)",
        || wait_ready(&rx, setup, stop).map(|ids| (ids, String::new())),
    )?;
    let shown_order = [
        Replica::of(Role::Frontend),
        Replica::backend(1),
        Replica::backend(2),
        Replica::of(Role::Intruder),
    ];
    for replica in shown_order {
        let (Some(id), Some(site)) = (
            identities.get(&replica),
            setup.sites.iter().find(|s| s.replica == replica),
        ) else {
            continue;
        };
        out.line(&format!(
            "{} {:<9} {}  serial {}  at {}",
            p.paint(Style::Good, "✔"),
            replica.name(),
            p.paint(Style::Strong, &id.spiffe_id),
            lines::short_serial(&id.serial),
            site.place
        ))?;
    }
    let endpoints: Vec<String> = setup
        .layout
        .service_endpoints()
        .iter()
        .map(|(r, a)| format!("{} {a}", r.name()))
        .collect();
    // Only pods resolve the name (their /etc/hosts); on loopback the ClusterIP is all there is.
    let name = match setup.backing {
        Backing::Namespaced(_) => format!(" ({SERVICE_HOST})"),
        Backing::Loopback(_) => String::new(),
    };
    out.line(&format!(
        "service {SERVICE}: {}{name} → targetPort http: {}; each caller's sidecar picks the pod",
        mesh_file::cluster_addr(),
        endpoints.join(", ")
    ))?;
    let ports: Vec<String> = setup
        .layout
        .app_ports()
        .iter()
        .map(|p| format!(":{p}"))
        .collect();
    out.line(&format!(
        "policy shop/{}: only {} may reach the backends on {} (mesh file {})",
        mesh_file::POLICY,
        Role::Frontend.short_id(),
        ports.join(", "),
        setup.mesh_file.display()
    ))?;
    let how = match setup.backing {
        Backing::Namespaced(_) => {
            let [by_name, by_ip] = super::namespaced::caller_urls();
            format!("{by_name} and {by_ip} in turn")
        }
        Backing::Loopback(_) => format!(
            "its ClusterIP {} (their outbound listeners)",
            mesh_file::cluster_addr()
        ),
    };
    out.line(&p.paint(
        Style::Strong,
        &format!(
            "traffic: the frontend and the intruder call the Service every second for {}: {how} (Ctrl-C stops)",
            humantime::format_duration(setup.duration)
        ),
    ))?;

    let mut story = Story::new(&identities, &setup.layout.service_endpoints());
    let plan = story::plan(setup.duration);
    let mut next_edit = plan.iter().peekable();
    sites.go();
    setup
        .backing
        .start_callers(setup.duration)
        .context("starting the callers' apps")?;
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
            Event::Identity { replica, identity } => {
                story.identity(replica, &identity, at).into_iter().collect()
            }
            Event::Records { replica, records } => story.records(replica, &records, at),
            Event::MeshApplied { replica, seen } => {
                story.mesh_applied(replica, seen);
                Vec::new()
            }
            Event::Ready { .. } => Vec::new(),
            Event::Trouble { replica, message } => {
                story.trouble(replica, &message, at).into_iter().collect()
            }
            Event::Failed { replica, message } => anyhow::bail!("{}: {message}", replica.name()),
        };
        for line in lines {
            out.line(&line.render(p))?;
        }
    }
    let shown = started.elapsed();
    sites.stop();
    for line in story.summary(shown, p, setup.backing.kube_proxy_connections()) {
        out.line(&line)?;
    }
    Ok(())
}

/// Collects every sidecar's `Ready`, within [`READY_TIMEOUT`].
fn wait_ready(
    rx: &mpsc::Receiver<Event>,
    setup: &Setup<'_>,
    stop: &Stop,
) -> anyhow::Result<BTreeMap<Replica, Identity>> {
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
            Ok(Event::Ready { replica, identity }) => {
                ready.insert(replica, identity);
            }
            Ok(Event::Failed { replica, message }) => {
                anyhow::bail!("{}: {message}", replica.name())
            }
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
