//! Packet capture on the switch's bridge ([`Capture`]): every frame between pods crosses it.
//! `dumpcap` (Wireshark's capture tool) writes a pcap file; [`Pcap`] searches its raw bytes
//! (is this text anywhere on the wire?) and asks `tshark` for dissected fields (which TLS
//! version did the handshakes negotiate?).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::error::{Result, SandboxError, io_error};
use super::netns::Cmd;
use super::process::{Process, Signal, tail};
use super::{BRIDGE, Sandbox};

/// How long `dumpcap` may take to start capturing, and to finish its file.
const CAPTURE_TIMEOUT: Duration = Duration::from_secs(15);

/// Numbers capture files.
static CAPTURES: AtomicU32 = AtomicU32::new(0);

/// A capture running on the bridge.
#[derive(Debug)]
pub struct Capture {
    /// `dumpcap`.
    process: Process,
    /// Where it writes.
    file: PathBuf,
}

impl Capture {
    /// Starts capturing what crosses the bridge and matches the BPF `filter` (e.g. `tcp`), and
    /// waits until `dumpcap` says it captures.
    pub fn start(sandbox: &Sandbox, filter: &str) -> Result<Capture> {
        let n = CAPTURES.fetch_add(1, Ordering::Relaxed);
        let file = sandbox.dir().join(format!("capture-{n}.pcap"));
        let process = sandbox.switch().spawn(
            &Cmd::new("dumpcap")
                .args(["-i", BRIDGE, "-f", filter, "-P", "-w"])
                .arg(&file),
        )?;
        process.wait_for_output("Capturing on", CAPTURE_TIMEOUT)?;
        Ok(Capture { process, file })
    }

    /// Stops capturing (SIGINT: `dumpcap` finishes the file) and returns the file.
    pub fn stop(self) -> Result<Pcap> {
        self.process.signal(Signal::Int)?;
        if self.process.wait(CAPTURE_TIMEOUT).is_err() {
            self.process.stop(Duration::ZERO)?;
        }
        if !self.file.is_file() {
            return Err(SandboxError::State {
                what: format!("read capture {}", self.file.display()),
                reason: "dumpcap wrote no file",
            });
        }
        Ok(Pcap { path: self.file })
    }
}

/// A finished capture file.
#[derive(Debug, Clone)]
pub struct Pcap {
    /// The file (pcap format).
    path: PathBuf,
}

impl Pcap {
    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `needle` appears anywhere in the file: in any packet, whatever its protocol.
    pub fn contains(&self, needle: &[u8]) -> Result<bool> {
        let bytes = std::fs::read(&self.path).map_err(io_error(&self.path))?;
        Ok(!needle.is_empty() && bytes.windows(needle.len()).any(|w| w == needle))
    }

    /// `tshark -r FILE -d DECODE_AS… -Y FILTER -T fields -e FIELD…`: one row per matching
    /// packet, one column per field. `decode_as` entries look like `tcp.port==15008,tls`.
    pub fn fields(
        &self,
        decode_as: &[&str],
        filter: &str,
        fields: &[&str],
    ) -> Result<Vec<Vec<String>>> {
        let mut tshark = Command::new("tshark");
        tshark.arg("-r").arg(&self.path).arg("-n");
        for d in decode_as {
            tshark.args(["-d", d]);
        }
        tshark.args(["-Y", filter, "-T", "fields", "-E", "separator=/t"]);
        for f in fields {
            tshark.args(["-e", f]);
        }
        let display = format!("{tshark:?}");
        let output =
            tshark
                .stdin(Stdio::null())
                .output()
                .map_err(|source| SandboxError::Spawn {
                    command: display.clone(),
                    source,
                })?;
        if !output.status.success() {
            return Err(SandboxError::Failed {
                command: display,
                status: output.status,
                stderr: tail(&String::from_utf8_lossy(&output.stderr), 2000).to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.split('\t').map(str::to_owned).collect())
            .collect())
    }
}
