//! The worker as the gateway of the same process reaches it (`tollgate up`):
//! the dispatch route and the load report, called directly.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, Stream};
use tollgate_shared::worker_api::WorkerLoad;
use tollgate_shared::worker_api::local::{BodyBroken, Dispatch, LocalWorker, Refused, Relayed};

use crate::relay::{Forwarded, Watched};
use crate::server::NodeState;

/// A node's state, shared with its HTTP server.
pub struct Local(pub Arc<NodeState>);

impl LocalWorker for Local {
    fn load(&self, gateway: &str) -> WorkerLoad {
        self.0.load(Some(gateway))
    }

    fn dispatch(&self, d: Dispatch) -> BoxFuture<'static, Result<Relayed, Refused>> {
        let state = self.0.clone();
        async move {
            let fwd = Forwarded {
                request_id: Some(d.request_id),
                traceparent: Some(d.traceparent),
            };
            let (answer, span) = state
                .dispatch(d.shard, d.endpoint, d.body, Some(d.gateway), fwd)
                .await?;
            Ok(Relayed {
                status: answer.status,
                body: Box::pin(Spanned {
                    body: answer.body,
                    _span: span,
                }),
            })
        }
        .boxed()
    }
}

/// The answer's body with the dispatch's span kept open until it is done.
struct Spanned {
    body: Watched,
    _span: tracing::Span,
}

impl Stream for Spanned {
    type Item = Result<Bytes, BodyBroken>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.body).poll_next(cx)
    }
}
