//! `trellis-proxy`: the Trellis sidecar.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | `run` flags (each an env var), validated before any port is bound |
//! | [`ports`] | the well-known ports of docs/design.md |
//! | [`identity`] | key in memory, SVID from the control plane, renewal at half-life with jitter and backoff |
//! | [`state`] | the mesh snapshot: which address is which workload (identity, tunnel), which ClusterIP:port is which Service |
//! | [`services`] | Services as held: endpoints with their health and live load |
//! | [`discovery`] | the control plane's `Watch` stream: full state, then only changes, applied to a copy of [`state`] and acknowledged (last state kept if it drops) |
//! | [`route`] | the outbound decision (pure): tunnel, Service, passthrough or refuse |
//! | [`balance`] | which endpoint of a Service takes a connection (pure): power of two choices |
//! | [`backoff`] | the retry delay of every reconnect loop |
//! | [`policy`] | the inbound decision (pure): may this identity reach this port |
//! | [`outbound`] | 15001 / explicit listeners: original destination → route → tunnel or passthrough |
//! | [`inbound`] | 15006: plaintext at an app port: STRICT refuses, PERMISSIVE passes and records |
//! | [`tunnel`] | 15008 server (mTLS + HTTP/2 CONNECT) and the client pool (one connection per peer) |
//! | [`copy`] | bytes both ways: half-close, backpressure, idle timeout, live counters |
//! | [`heap_trim`] | memory back to the kernel once a burst of connections has closed (`malloc_trim`) |
//! | [`copy_buffers`] | the copy buffers, lent only while a direction holds bytes; a small pool per thread |
//! | [`records`] | the connection log behind `/handshakes` |
//! | [`failures`] | failed handshakes from outside, summed per source and reason (bounded), shown in `/handshakes` |
//! | [`metric_labels`] | label values from outside (ports, peer identities), bounded |
//! | [`refusals`] | the rate-limited `info` line of every refused connection |
//! | [`metrics`] | `trellis_proxy_*` Prometheus metrics |
//! | [`admin`] | 127.0.0.1:15000 admin pages and the pod-IP :15020 health/metrics |
//! | [`admin_policy`] | the admin page `/policy`: the inbound policy in force and the verdict for a caller and port |
//! | [`probe`] | the app's original probes, run on kubelet's behalf at 15020 `/app-health/...` |
//! | [`quit`] | `POST /quitquitquit` on the admin port: a Job's app stops its sidecar |
//! | [`wait`] | `trellis-proxy wait`: the classic layout's postStart hook, until `/ready` |
//! | [`log_level`] | the admin page `/logging`: the log filter, read and changed at run time |
//! | [`orig_dst`] | `SO_ORIGINAL_DST` |
//! | [`redirect`] | `trellis-proxy init`: the iptables rules that send a pod's TCP to the proxy |
//! | [`context`] | the handles every listener shares |
//! | [`run`] | start-up order and graceful drain |
//!
//! One connection, outbound: the app's `connect()` is redirected to 15001 → [`outbound`] reads
//! the original destination → [`route`] finds the peer in [`state`] → [`tunnel::pool`] opens a
//! CONNECT stream on the pooled mTLS connection to the peer's 15008 (verifying its SPIFFE ID)
//! → [`tunnel::server`] on the peer verifies ours, [`policy`] authorizes the port, and it dials
//! the app on localhost → [`copy`] moves the bytes; [`records`] logs the connection on both sides.

// One exception, allowed where it is: `heap_trim::release` (glibc's `malloc_trim`).
#![deny(unsafe_code)]

pub mod admin;
pub mod admin_policy;
pub mod backoff;
pub mod balance;
pub mod config;
pub mod context;
pub mod copy;
pub mod copy_buffers;
pub mod discovery;
pub mod failures;
pub mod heap_trim;
pub mod identity;
pub mod inbound;
pub mod log_level;
pub mod malloc_tuning;
pub mod metric_labels;
pub mod metrics;
pub mod orig_dst;
pub mod outbound;
pub mod policy;
pub mod ports;
pub mod probe;
pub mod quit;
pub mod records;
pub mod redirect;
pub mod refusals;
pub mod route;
pub mod run;
pub mod services;
pub mod state;
pub mod tunnel;
pub mod wait;
