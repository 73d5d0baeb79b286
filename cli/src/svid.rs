//! `trellis svid fetch`: make a P-256 key in memory, get an X509-SVID for it from the control
//! plane with a token, and write `svid.pem` (leaf + chain), `svid.key` (0600) and `bundle.pem`,
//! so that anyone can check the result with openssl.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use tonic::Code;
use trellis_ca::{SpiffeId, TrustBundle, TrustDomain, WorkloadKey, der_to_pem};
use trellis_client::{CertifyError, IdentityClient, connect};

use crate::files::{CERT_MODE, KEY_MODE, write_atomic};

#[derive(Debug, Subcommand)]
pub enum SvidCommand {
    /// Get an SVID from the control plane and write it as PEM files.
    ///
    /// Example:
    ///   trellis svid fetch --control-plane 127.0.0.1:15012 --trust-bundle root-cert.pem \
    ///     --token-file token --out ./svid && \
    ///   openssl verify -CAfile svid/bundle.pem svid/svid.pem
    Fetch {
        /// Control plane address (host:port).
        #[arg(
            long,
            env = "TRELLIS_CONTROL_PLANE",
            default_value = "127.0.0.1:15012",
            value_parser = crate::dial::host_port
        )]
        control_plane: String,
        /// File holding the bearer token (ServiceAccount token or join token).
        #[arg(long, env = "TRELLIS_TOKEN_FILE")]
        token_file: PathBuf,
        /// PEM file with the root(s) the control plane's certificate must chain to.
        #[arg(long, env = "TRELLIS_TRUST_BUNDLE_FILE")]
        trust_bundle: PathBuf,
        /// The trust domain.
        #[arg(long, env = "TRELLIS_TRUST_DOMAIN", default_value = "cluster.local")]
        trust_domain: String,
        /// The identity to ask for (checked against the token by the control plane); by
        /// default the identity the token proves.
        #[arg(long)]
        identity: Option<String>,
        /// Requested lifetime, e.g. 1h (default: the control plane's).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        /// Directory to write svid.pem, svid.key and bundle.pem into (created if missing).
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
}

pub async fn run(command: SvidCommand) -> anyhow::Result<()> {
    match command {
        SvidCommand::Fetch {
            control_plane,
            token_file,
            trust_bundle,
            trust_domain,
            identity,
            ttl,
            out,
        } => {
            let td = TrustDomain::new(&trust_domain)
                .with_context(|| format!("--trust-domain {trust_domain:?}"))?;
            let identity = identity
                .map(|s| SpiffeId::parse(&s).with_context(|| format!("--identity {s:?}")))
                .transpose()?;
            let token = std::fs::read_to_string(&token_file)
                .with_context(|| format!("--token-file {}", token_file.display()))?;
            if token.trim().is_empty() {
                anyhow::bail!(
                    "--token-file {} is empty; it must hold the bearer token (a join token, or a ServiceAccount token with audience trellis-ca)",
                    token_file.display()
                );
            }
            let pem = std::fs::read(&trust_bundle)
                .with_context(|| format!("--trust-bundle {}", trust_bundle.display()))?;
            let bundle = TrustBundle::from_pem(td, &pem)
                .with_context(|| format!("--trust-bundle {}", trust_bundle.display()))?;
            let channel = connect(&control_plane, bundle, None, None).await?;
            let key = WorkloadKey::generate()?;
            let svid = IdentityClient::new(channel)
                .certify(&key, identity.as_ref(), token.trim(), ttl)
                .await
                .map_err(|e| refusal_with_hint(e, &token_file))?;
            std::fs::create_dir_all(&out).with_context(|| format!("--out {}", out.display()))?;
            let chain: String = svid.chain().iter().map(|c| der_to_pem(c)).collect();
            write_atomic(&out.join("svid.pem"), chain.as_bytes(), CERT_MODE)?;
            write_atomic(
                &out.join("svid.key"),
                key.private_key_pem().as_bytes(),
                KEY_MODE,
            )?;
            write_atomic(
                &out.join("bundle.pem"),
                svid.bundle().to_pem().as_bytes(),
                CERT_MODE,
            )?;
            println!(
                "{} (serial {}, expires {}) written to {}",
                svid.id(),
                svid.serial(),
                humantime::format_rfc3339_seconds(svid.not_after()),
                out.display()
            );
            Ok(())
        }
    }
}

/// What to do about a refusal, naming this command's flags.
fn refusal_with_hint(err: CertifyError, token_file: &std::path::Path) -> anyhow::Error {
    let hint = match &err {
        CertifyError::Refused { code, .. } => match code {
            Code::Unauthenticated => format!(
                "; check that --token-file {} holds a token this control plane accepts",
                token_file.display()
            ),
            Code::PermissionDenied => {
                "; the token proves another identity than --identity asks for".to_owned()
            }
            Code::ResourceExhausted => "; too many requests: wait a little and retry".to_owned(),
            Code::Unavailable => {
                "; the control plane cannot serve right now: retry later".to_owned()
            }
            _ => String::new(),
        },
        _ => String::new(),
    };
    anyhow::anyhow!("{err}{hint}")
}
