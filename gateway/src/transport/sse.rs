//! Streaming answers, between the relay and the client's connection.
//!
//! Headers early, but not too early. The dispatch (queue wait, then vLLM's
//! answer head) gets one keep-alive interval to settle: an error by then
//! (queue full, vLLM's 400, a quick queue timeout) keeps its own status code.
//! Past that the 200 and the SSE headers go out, and the stream carries
//! `: keep-alive` comments every interval while the request waits in the queue
//! or for its first token, so proxies with idle timeouts do not cut it. A
//! failure after that point (the queue timeout, most often) can no longer be
//! a status: it is sent as one SSE error event (`data: {"error": …}`, the
//! body the status would have carried) and the stream ends without `[DONE]`,
//! as a broken relay does.
//!
//! A reader that stopped reading. The frames go through a small channel to
//! the connection; a pump task moves them. When the client stops reading,
//! the socket and actix's buffer fill, actix stops taking frames, the channel
//! fills, and a frame that waits longer than `stream_idle_timeout` for room
//! ends the pump: the relay (with its scheduler lease and upstream
//! connection) is dropped, which aborts the request in vLLM. What stays
//! buffered is bounded by the channel plus actix's write buffer; the idle
//! connection itself is actix's to close. A client that leaves drops the
//! body, which aborts the pump at once (cancellation as before).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::HttpResponse;
use actix_web::http::header::CACHE_CONTROL;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::ApiError;

/// Frames buffered between the pump and the connection.
const BUFFERED_FRAMES: usize = 16;
const KEEPALIVE: &[u8] = b": keep-alive\n\n";

/// How a streaming answer is paced and watched.
#[derive(Debug, Clone, Copy)]
pub struct StreamTimers {
    /// A quiet stream gets a comment this often; also the grace before the
    /// headers are committed.
    pub keepalive: Duration,
    /// A frame that cannot be handed to the client for this long aborts the stream.
    pub idle: Duration,
}

type Frames = Pin<Box<dyn Stream<Item = Result<Bytes, actix_web::Error>>>>;
type Start = Pin<Box<dyn Future<Output = Result<Frames, ApiError>>>>;

/// Answers a streaming request. `start` waits for the grant and vLLM's
/// answer head and resolves to the relayed frames.
pub async fn respond<F, S>(start: F, timers: StreamTimers) -> Result<HttpResponse, ApiError>
where
    F: Future<Output = Result<S, ApiError>> + 'static,
    S: Stream<Item = Result<Bytes, actix_web::Error>> + 'static,
{
    let mut start: Start = Box::pin(async move { start.await.map(|s| Box::pin(s) as Frames) });
    let source = match tokio::time::timeout(timers.keepalive, &mut start).await {
        Ok(Ok(frames)) => Source::Ready(frames),
        Ok(Err(e)) => return Err(e),
        Err(_) => Source::Pending(start),
    };
    let (tx, rx) = mpsc::channel(BUFFERED_FRAMES);
    // Owned by the body: aborted when the connection drops it.
    let pump = actix_web::rt::spawn(pump(source, tx, timers));
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((CACHE_CONTROL, "no-cache"))
        .insert_header(("x-accel-buffering", "no"))
        .streaming(Body { rx, pump }))
}

enum Source {
    Ready(Frames),
    Pending(Start),
}

/// Why the pump stopped handing frames over.
enum Stop {
    /// The body was dropped (the client left).
    Gone,
    /// No room for a frame within the idle timeout: the client stopped reading.
    Stalled,
}

async fn pump(source: Source, tx: mpsc::Sender<Bytes>, timers: StreamTimers) {
    let result = async {
        let mut frames = match source {
            Source::Ready(frames) => frames,
            Source::Pending(mut start) => loop {
                // The wait so far already lasted one interval.
                send(&tx, Bytes::from_static(KEEPALIVE), timers.idle).await?;
                match tokio::time::timeout(timers.keepalive, &mut start).await {
                    Err(_) => {}
                    Ok(Ok(frames)) => break frames,
                    Ok(Err(e)) => {
                        tracing::info!(
                            code = e.code(),
                            "stream failed after its headers were sent"
                        );
                        return send(&tx, error_event(&e), timers.idle).await;
                    }
                }
            },
        };
        loop {
            match tokio::time::timeout(timers.keepalive, frames.next()).await {
                Err(_) => send(&tx, Bytes::from_static(KEEPALIVE), timers.idle).await?,
                Ok(Some(Ok(frame))) => send(&tx, frame, timers.idle).await?,
                Ok(Some(Err(_)) | None) => return Ok(()),
            }
        }
    }
    .await;
    if let Err(Stop::Stalled) = result {
        tracing::warn!(
            idle_secs = timers.idle.as_secs(),
            "client stopped reading a stream; aborted upstream"
        );
    }
}

async fn send(tx: &mpsc::Sender<Bytes>, frame: Bytes, idle: Duration) -> Result<(), Stop> {
    match tokio::time::timeout(idle, tx.send(frame)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Stop::Gone),
        Err(_) => Err(Stop::Stalled),
    }
}

/// The error a status code would have carried, as one SSE event.
fn error_event(e: &ApiError) -> Bytes {
    Bytes::from(format!("data: {}\n\n", e.body()))
}

/// The response body: frames from the pump; dropping it stops the pump.
struct Body {
    rx: mpsc::Receiver<Bytes>,
    pump: JoinHandle<()>,
}

impl Stream for Body {
    type Item = Result<Bytes, actix_web::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|f| f.map(Ok))
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMERS: StreamTimers = StreamTimers {
        keepalive: Duration::from_secs(15),
        idle: Duration::from_secs(60),
    };

    fn frames(
        list: &[&'static str],
    ) -> impl Stream<Item = Result<Bytes, actix_web::Error>> + use<> {
        futures::stream::iter(
            list.iter()
                .map(|f| Ok(Bytes::from_static(f.as_bytes())))
                .collect::<Vec<_>>(),
        )
    }

    async fn body_text(resp: HttpResponse) -> String {
        let bytes = actix_web::body::to_bytes(resp.into_body()).await.unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[actix_web::test]
    async fn a_quick_error_keeps_its_status() {
        let r = respond(
            async {
                Err::<futures::stream::Empty<_>, _>(ApiError::QueueFull {
                    retry_after_secs: 1,
                })
            },
            TIMERS,
        )
        .await;
        assert!(matches!(r, Err(ApiError::QueueFull { .. })));
    }

    #[actix_web::test]
    async fn a_long_wait_sends_keepalives_then_the_stream() {
        tokio::time::pause();
        let start = async {
            tokio::time::sleep(Duration::from_secs(40)).await;
            Ok(frames(&["data: 1\n\n", "data: [DONE]\n\n"]))
        };
        let resp = respond(start, TIMERS).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            body_text(resp).await,
            ": keep-alive\n\n: keep-alive\n\ndata: 1\n\ndata: [DONE]\n\n"
        );
    }

    #[actix_web::test]
    async fn a_late_failure_is_an_error_event() {
        tokio::time::pause();
        let start = async {
            tokio::time::sleep(Duration::from_secs(20)).await;
            Err::<futures::stream::Empty<_>, _>(ApiError::Overloaded {
                message: "no room",
                retry_after_secs: 1,
            })
        };
        let resp = respond(start, TIMERS).await.unwrap();
        let text = body_text(resp).await;
        let (head, event) = text.split_once("data: ").unwrap();
        assert_eq!(head, ": keep-alive\n\n");
        let v: serde_json::Value = serde_json::from_str(event.trim()).unwrap();
        assert_eq!(v["error"]["code"], "overloaded");
    }

    #[actix_web::test]
    async fn a_stream_waiting_for_its_first_token_gets_keepalives() {
        tokio::time::pause();
        let slow_first = futures::stream::once(async {
            tokio::time::sleep(Duration::from_secs(31)).await;
            Ok(Bytes::from_static(b"data: [DONE]\n\n"))
        });
        let resp = respond(async move { Ok(slow_first) }, TIMERS)
            .await
            .unwrap();
        assert_eq!(
            body_text(resp).await,
            ": keep-alive\n\n: keep-alive\n\ndata: [DONE]\n\n"
        );
    }

    #[actix_web::test]
    async fn a_reader_that_stops_reading_ends_the_upstream() {
        tokio::time::pause();
        let (dropped_tx, dropped_rx) = tokio::sync::oneshot::channel::<()>();
        struct Upstream(Option<tokio::sync::oneshot::Sender<()>>);
        impl Drop for Upstream {
            fn drop(&mut self) {
                let _ = self.0.take().map(|tx| tx.send(()));
            }
        }
        let guard = Upstream(Some(dropped_tx));
        let endless = futures::stream::unfold(guard, |g| async move {
            Some((Ok(Bytes::from_static(b"data: token\n\n")), g))
        });
        let resp = respond(async move { Ok(endless) }, TIMERS).await.unwrap();
        // Hold the body without reading it: the channel fills, then the idle
        // timeout passes and the pump drops the upstream.
        let body = resp.into_body();
        tokio::time::timeout(Duration::from_secs(3600), dropped_rx)
            .await
            .expect("the upstream was never dropped")
            .unwrap();
        drop(body);
    }
}
