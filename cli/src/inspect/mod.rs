//! `trellis inspect`: a proxy's identity and its recent connections, once or `--watch`ed, as
//! a table or JSON. Reads the proxy's admin endpoint directly (`--admin ADDR`) or, for a pod,
//! through the API server (`-n NS POD`, port-forward to its 15000).
//!
//! Owns: the command's flags and its polling loop. What is shown is decided in [`view`].

mod view;

use std::time::Duration;

use clap::{Args, ValueEnum};
use tokio::time::MissedTickBehavior;

use crate::admin_api::{Handshake, Snapshot};
use crate::admin_client::{ADMIN_PORT, AdminClient, DEFAULT_ADMIN};
use crate::dial::Target;
use crate::kube_access::{self, KubeOpts};
use crate::pod_ref::{self, PodRef};
use crate::style::{Palette, print};
use crate::table::Table;

/// How often `--watch` polls.
const POLL_EVERY: Duration = Duration::from_secs(1);
/// How many records `--watch` asks for on each poll after the first screen (at least
/// `--limit`): enough to find the previous poll's rows among them.
const WATCH_POLL_LIMIT: u64 = 200;

/// Output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Identity block and a table of connections.
    #[default]
    Table,
    /// `{"identity": ..., "handshakes": [...]}`; with --watch, one such object per line
    /// holding only the new connections.
    Json,
    /// The same document as YAML; with --watch, one YAML document (`---`) per poll.
    Yaml,
}

/// `trellis inspect` flags.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  # The proxy on this machine (admin endpoint on 127.0.0.1:15000)
  trellis inspect

  # A proxy started with --admin-listen 127.0.0.1:15100, as JSON
  trellis inspect --admin 127.0.0.1:15100 -o json

  # A meshed pod in a cluster, through the API server; follow new connections
  trellis inspect -n shop frontend-7d9f8b7c5-x2x4q --watch

  # A pod of a Deployment, or one matching a label selector, as YAML
  trellis inspect -n shop deploy/frontend -o yaml
  trellis inspect -n shop -l app=frontend

  # Only refused connections, with jq
  trellis inspect -o json | jq '.handshakes[] | select(.decision != \"allow\")'")]
pub struct InspectArgs {
    /// The proxy's admin address (host:port) on this machine.
    #[arg(
        long,
        value_name = "ADDR",
        env = "TRELLIS_ADMIN",
        conflicts_with_all = ["pod", "selector"],
        value_parser = crate::dial::host_port
    )]
    admin: Option<String>,
    /// Namespace of POD (default: the kubeconfig context's).
    #[arg(short = 'n', long, value_name = "NS")]
    namespace: Option<String>,
    /// A meshed pod to inspect through the Kubernetes API server (port-forward to its
    /// admin port 15000): NAME, pod/NAME or deploy/NAME (a ready pod of the Deployment).
    #[arg(value_name = "POD", value_parser = |s: &str| PodRef::parse(s).map_err(|e| e.to_string()))]
    pod: Option<PodRef>,
    /// Inspect a ready pod matching this label selector (like kubectl's -l).
    #[arg(short = 'l', long, value_name = "SELECTOR", conflicts_with = "pod")]
    selector: Option<String>,
    /// Keep polling every second and print new connections as they come; stop with Ctrl-C.
    #[arg(short, long)]
    watch: bool,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
    /// How many of the most recent connections to show.
    #[arg(long, value_name = "N", default_value_t = 50,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    limit: u64,
}

/// Runs `trellis inspect`.
pub async fn run(args: InspectArgs, kube: &KubeOpts, palette: Palette) -> anyhow::Result<()> {
    let pod = match (&args.pod, &args.selector) {
        (Some(pod), _) => Some(pod.clone()),
        (None, Some(selector)) => Some(PodRef::Selector(selector.clone())),
        (None, None) if args.namespace.is_some() => {
            anyhow::bail!(
                "-n NAMESPACE names where POD is: give POD (NAME, pod/NAME, deploy/NAME) or -l SELECTOR"
            )
        }
        (None, None) => None,
    };
    let target = match pod {
        Some(pod) => {
            let client = kube_access::client(kube).await?;
            let namespace = args
                .namespace
                .clone()
                .unwrap_or_else(|| client.default_namespace().to_owned());
            let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
                kube::Api::namespaced(client.clone(), &namespace);
            let name = pod_ref::resolve(&pods, &namespace, &pod).await?;
            kube_access::admin_target(client, Some(&namespace), &name, ADMIN_PORT).await?
        }
        None => Target::tcp(args.admin.as_deref().unwrap_or(DEFAULT_ADMIN)),
    };
    let mut admin = AdminClient::new(target);
    let identity = admin.identity().await?;
    let (handshakes, failed) = admin.handshakes_page(args.limit).await?;
    let mut table = Table::new(&view::COLUMNS);
    let first = match args.output {
        Output::Table => {
            let mut screen =
                view::first_screen(identity.as_ref(), &handshakes, &mut table, palette);
            screen.push_str(&view::failed_handshakes(failed.as_ref()));
            screen
        }
        Output::Json if args.watch => view::json_line(&Snapshot {
            identity: identity.clone(),
            handshakes: handshakes.clone(),
            failed_handshakes: failed,
        }),
        Output::Json => view::json_document(&Snapshot {
            identity: identity.clone(),
            handshakes: handshakes.clone(),
            failed_handshakes: failed,
        }),
        Output::Yaml => view::yaml_document(&Snapshot {
            identity: identity.clone(),
            handshakes: handshakes.clone(),
            failed_handshakes: failed,
        })?,
    };
    print(&first)?;
    if args.watch {
        let watch = Watch {
            admin,
            output: args.output,
            palette,
            table,
            serial: identity.map(|i| i.serial),
            last: handshakes,
            poll_limit: args.limit.max(WATCH_POLL_LIMIT),
        };
        watch.run().await?;
    }
    Ok(())
}

/// The state of `--watch` between polls.
#[derive(Debug)]
struct Watch {
    /// The proxy.
    admin: AdminClient,
    /// How to print.
    output: Output,
    /// Colours.
    palette: Palette,
    /// The table's column widths, kept so new rows line up with the first screen.
    table: Table,
    /// Serial of the certificate last seen, to announce renewals.
    serial: Option<String>,
    /// The previous poll's records, to tell new ones from old.
    last: Vec<Handshake>,
    /// How many records each poll asks for.
    poll_limit: u64,
}

impl Watch {
    /// Polls every second until Ctrl-C. A proxy that stops answering is reported once and
    /// polled again; its coming back is reported too.
    async fn run(mut self) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval(POLL_EVERY);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tick.tick().await; // The first tick is immediate; the first screen was just printed.
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        let mut failing = false;
        loop {
            let step = async {
                tick.tick().await;
                self.poll().await
            };
            let polled = tokio::select! {
                _ = &mut ctrl_c => return Ok(()),
                polled = step => polled,
            };
            match polled {
                Ok(()) if failing => {
                    failing = false;
                    eprintln!("reconnected to the proxy's admin endpoint");
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    failing = true;
                    eprintln!("warning: {e:#}\n(retrying every second; Ctrl-C to stop)");
                }
                Err(_) => {}
            }
        }
    }

    async fn poll(&mut self) -> anyhow::Result<()> {
        let identity = self.admin.identity().await?;
        let handshakes = self.admin.handshakes(self.poll_limit).await?;
        let new = view::new_since(&self.last, &handshakes, self.poll_limit);
        let serial = identity.as_ref().map(|i| i.serial.clone());
        let renewed = serial.is_some() && serial != self.serial;
        self.serial = serial;
        self.last = handshakes;
        match self.output {
            Output::Table => {
                let mut out = String::new();
                if renewed && let Some(id) = &identity {
                    out.push_str(&format!(
                        "-- new certificate: serial {}, valid until {}\n",
                        id.serial, id.not_after
                    ));
                }
                if new.gap {
                    out.push_str("-- more connections than one poll holds came and went; some are not shown\n");
                }
                let rows: Vec<_> = new.rows.iter().map(view::row).collect();
                self.table.fit(&rows);
                for r in &rows {
                    out.push_str(&self.table.line(r, self.palette));
                    out.push('\n');
                }
                Ok(print(&out)?)
            }
            Output::Json | Output::Yaml if renewed || !new.rows.is_empty() => {
                let snapshot = Snapshot {
                    failed_handshakes: None,
                    identity,
                    handshakes: new.rows,
                };
                let text = match self.output {
                    Output::Yaml => view::yaml_document(&snapshot)?,
                    _ => view::json_line(&snapshot),
                };
                Ok(print(&text)?)
            }
            Output::Json | Output::Yaml => Ok(()),
        }
    }
}
