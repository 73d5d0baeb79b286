//! `trellis`: the command-line tool of the Trellis mesh.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`svid`] | `trellis svid fetch`: get an SVID from the control plane and write it as PEM files |
//! | [`files`] | writing output files atomically, keys with mode 0600 |

#![forbid(unsafe_code)]

mod files;
mod svid;

use clap::{Parser, Subcommand};

/// Trellis: zero-trust service mesh for Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "trellis", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Work with X509-SVIDs (workload certificates).
    Svid {
        #[command(subcommand)]
        command: svid::SvidCommand,
    },
    /// Print the version of this tool.
    Version,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Svid { command } => svid::run(command).await,
        Command::Version => {
            println!("trellis {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
