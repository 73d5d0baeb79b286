//! Packet capture on the node's bridge ([`Capture`]): every frame between pods crosses it.
//! `dumpcap` (Wireshark's capture tool) writes a pcap file; [`Pcap`] searches its raw bytes
//! (is this text anywhere on the wire?) and asks `tshark` for dissected fields (which TLS
//! version did the handshakes negotiate?).
//!
//! `dumpcap` says "Capturing on" before the capture is live, and holds captured packets back
//! for a while before writing them. So the capture is synchronised with probe frames instead:
//! sent out of the bridge (a local-experimental EtherType, which no pod answers) with a unique
//! payload, until that payload is in the file. At start this proves the capture live; at stop,
//! that everything sent before the probe is in the file.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Result, SandboxError, io_error};
use crate::http::python;
use crate::netns::Cmd;
use crate::process::{POLL, Process, Signal, tail};
use crate::{BRIDGE, Sandbox};

/// How long `dumpcap` may take to start capturing, and to finish its file.
const CAPTURE_TIMEOUT: Duration = Duration::from_secs(15);

/// EtherType of the probe frames (IEEE 802 local experimental 1).
const PROBE_ETHERTYPE: &str = "0x88b5";
/// Sends one broadcast frame carrying `argv[2]` out of interface `argv[1]`.
const PROBE_PY: &str = r#"
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
mac = s.getsockname()[4]
s.send(b"\xff" * 6 + mac + b"\x88\xb5" + sys.argv[2].encode().ljust(46, b"\0"))
"#;
/// How long to wait for a probe to reach the file before sending it again.
const PROBE_RESEND: Duration = Duration::from_millis(700);

/// Numbers capture files.
static CAPTURES: AtomicU32 = AtomicU32::new(0);

/// A capture running on the bridge.
#[derive(Debug)]
pub struct Capture<'a> {
    /// The sandbox whose bridge is captured (probes are sent from its node).
    sandbox: &'a Sandbox,
    /// `dumpcap`.
    process: Process,
    /// Where it writes.
    file: PathBuf,
    /// Its number in this process (probe payloads carry it).
    n: u32,
}

impl<'a> Capture<'a> {
    /// Starts capturing what crosses the bridge and matches the BPF `filter` (e.g. `tcp`; the
    /// probe frames are captured too), and waits until the capture is live.
    pub fn start(sandbox: &'a Sandbox, filter: &str) -> Result<Capture<'a>> {
        let n = CAPTURES.fetch_add(1, Ordering::Relaxed);
        let file = sandbox.dir().join(format!("capture-{n}.pcap"));
        let filter = format!("({filter}) or ether proto {PROBE_ETHERTYPE}");
        let process = sandbox.node().netns().spawn(
            &Cmd::new("dumpcap")
                .args(["-i", BRIDGE, "-f", &filter, "-P", "-w"])
                .arg(&file),
        )?;
        let capture = Capture {
            sandbox,
            process,
            file,
            n,
        };
        capture.sync("start")?;
        Ok(capture)
    }

    /// Stops capturing once everything that crossed the bridge so far is in the file, and
    /// returns the file.
    pub fn stop(self) -> Result<Pcap> {
        self.sync("stop")?;
        self.process.signal(Signal::Int)?;
        if self.process.wait(CAPTURE_TIMEOUT).is_err() {
            self.process.stop(Duration::ZERO)?;
        }
        Ok(Pcap { path: self.file })
    }

    /// Sends a probe frame out of the bridge until its payload is in the file.
    fn sync(&self, when: &str) -> Result<()> {
        let payload = format!(
            "trellis-capture-probe-{}-{}-{when}",
            std::process::id(),
            self.n
        );
        let probe = Cmd::new(python()).args(["-c", PROBE_PY, BRIDGE, &payload]);
        let deadline = Instant::now() + CAPTURE_TIMEOUT;
        loop {
            self.sandbox.node().netns().exec_ok(&probe)?;
            let resend = Instant::now() + PROBE_RESEND;
            while Instant::now() < resend {
                let bytes = std::fs::read(&self.file).unwrap_or_default();
                if bytes
                    .windows(payload.len())
                    .any(|w| w == payload.as_bytes())
                {
                    return Ok(());
                }
                if !self.process.is_running() || Instant::now() >= deadline {
                    return Err(SandboxError::Deadline {
                        what: format!("capture probe ({when}) in {}", self.file.display()),
                        after: CAPTURE_TIMEOUT,
                        last: tail(&self.process.stderr(), 1000).to_owned(),
                    });
                }
                std::thread::sleep(POLL);
            }
        }
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
