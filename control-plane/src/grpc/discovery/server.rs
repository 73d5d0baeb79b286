//! `trellis.discovery.v1.Discovery` as an HTTP/2 service, written out instead of generated so
//! that responses are gRPC frames the streams built themselves ([`super::frames`]): the shared
//! chunk of an update goes to hyper as the same reference-counted buffer for every stream,
//! where the generated server would encode (copy) every message once per stream. Requests are
//! decoded with tonic's own `Streaming`, exactly as the generated server would.
//!
//! Owns: [`DiscoveryServer`] (routing the one method, the response headers and trailers) and
//! [`WatchBody`]. What is sent is [`super::DiscoveryService`]'s.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderValue};
use hyper::body::Frame;
use tokio::sync::mpsc;
use tonic::server::NamedService;
use tonic::{Status, Streaming};
use trellis_proto::discovery::WatchRequest;

use super::DiscoveryService;
use crate::tls_listener::PeerInfo;

/// The one method.
const WATCH: &str = "/trellis.discovery.v1.Discovery/Watch";
/// Largest request accepted (requests are acknowledgements: a few hundred bytes).
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// The Discovery service for tonic's router.
#[derive(Debug, Clone)]
pub struct DiscoveryServer {
    /// Opens the streams.
    service: Arc<DiscoveryService>,
}

impl DiscoveryServer {
    /// Serves `service`.
    pub fn new(service: DiscoveryService) -> Self {
        Self {
            service: Arc::new(service),
        }
    }
}

impl NamedService for DiscoveryServer {
    const NAME: &'static str = "trellis.discovery.v1.Discovery";
}

impl tower::Service<http::Request<tonic::body::Body>> for DiscoveryServer {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let service = self.service.clone();
        Box::pin(async move {
            if req.uri().path() != WATCH {
                return Ok(Status::unimplemented(format!(
                    "{} has only Watch",
                    DiscoveryServer::NAME
                ))
                .into_http());
            }
            let peer = req.extensions().get::<PeerInfo>().cloned();
            let requests: Streaming<WatchRequest> = Streaming::new_request(
                tonic_prost::ProstDecoder::<WatchRequest>::default(),
                req.into_body(),
                None,
                Some(MAX_REQUEST_BYTES),
            );
            Ok(match service.open(peer, requests).await {
                Ok(frames) => {
                    let mut response =
                        http::Response::new(tonic::body::Body::new(WatchBody::new(frames)));
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        HeaderValue::from_static("application/grpc"),
                    );
                    response
                }
                Err(status) => status.into_http(),
            })
        })
    }
}

/// A Watch response: the frames a stream sends, then `grpc-status: 0` when the stream ends.
#[derive(Debug)]
pub struct WatchBody {
    /// From the stream's task.
    frames: mpsc::Receiver<Bytes>,
    /// The trailers went out.
    ended: bool,
}

impl WatchBody {
    /// A body carrying `frames`.
    pub fn new(frames: mpsc::Receiver<Bytes>) -> Self {
        Self {
            frames,
            ended: false,
        }
    }
}

impl hyper::body::Body for WatchBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match self.frames.poll_recv(cx) {
            Poll::Ready(Some(bytes)) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
            Poll::Ready(None) => {
                self.ended = true;
                let mut trailers = HeaderMap::new();
                trailers.insert(Status::GRPC_STATUS, HeaderValue::from_static("0"));
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}
