//! App probes under STRICT mTLS. Kubelet's HTTP, TCP and gRPC probes of the app are plaintext
//! from the node, which STRICT refuses at 15006; so the injector rewrites them into `httpGet`
//! probes of `/app-health/<container>/<livez|readyz|startupz>` on the health port (pod
//! IP:15020) and hands the originals over in `TRELLIS_APP_PROBES`. This module serves those
//! paths by running the original probe against the app from inside the pod.
//!
//! | module | owns |
//! |---|---|
//! | [`spec`] | the `TRELLIS_APP_PROBES` JSON, validated into [`AppProbes`] (pure) |
//! | [`check`] | running one probe: HTTP(S) GET, TCP connect, gRPC health, within its timeout |
//! | [`endpoint`] | the answer on 15020: 200 / 503 with the reason / 404, concurrency cap |
//! | `dangerous_tls` | the certificate-blind TLS client of HTTPS probes (kubelet's behaviour) |

pub mod check;
mod dangerous_tls;
pub mod endpoint;
pub mod spec;

pub use endpoint::{Answer, AppHealth};
pub use spec::{AppProbes, PATH_PREFIX, ProbeKey, ProbeKind};
