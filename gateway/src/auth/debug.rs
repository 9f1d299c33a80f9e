//! What the `dev` scope adds: a caller that sends `x-tollgate-debug: 1` gets
//! `x-tollgate-timing` on inference answers, its request's stages in
//! Server-Timing syntax (`auth;dur=0.12, validate;dur=0.05, ...`, in ms).

use std::time::{Duration, Instant};

use actix_web::HttpRequest;
use actix_web::http::header::{HeaderName, HeaderValue};

pub const DEBUG_HEADER: &str = "x-tollgate-debug";
pub const TIMING_HEADER: &str = "x-tollgate-timing";

/// Stage durations of one request, each measured from the previous mark.
#[derive(Debug, Clone)]
pub struct Timing {
    started: Instant,
    last: Instant,
    stages: Vec<(&'static str, Duration)>,
}

/// True when the request asks for the timing breakdown.
pub fn requested(req: &HttpRequest) -> bool {
    req.headers()
        .get(DEBUG_HEADER)
        .is_some_and(|v| v.as_bytes() == b"1")
}

impl Timing {
    pub fn new(started: Instant) -> Timing {
        Timing {
            started,
            last: started,
            stages: Vec::with_capacity(6),
        }
    }

    /// Ends stage `name` now.
    pub fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        self.stages.push((name, now.duration_since(self.last)));
        self.last = now;
    }

    /// Ends two stages now: `first`, known to have taken `first_took`, then
    /// `rest` for the remainder since the previous mark.
    pub fn mark_split(&mut self, first: &'static str, first_took: Duration, rest: &'static str) {
        let now = Instant::now();
        let all = now.duration_since(self.last);
        let first_took = first_took.min(all);
        self.stages.push((first, first_took));
        self.stages.push((rest, all - first_took));
        self.last = now;
    }

    /// The stages so far and the total, as a header value.
    pub fn value(&self) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let mut parts: Vec<String> = self
            .stages
            .iter()
            .map(|(name, d)| format!("{name};dur={:.3}", ms(*d)))
            .collect();
        parts.push(format!("total;dur={:.3}", ms(self.started.elapsed())));
        parts.join(", ")
    }

    pub fn header(&self) -> Option<(HeaderName, HeaderValue)> {
        let value = HeaderValue::from_str(&self.value()).ok()?;
        Some((HeaderName::from_static(TIMING_HEADER), value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_render_in_server_timing_syntax() {
        let start = Instant::now();
        let mut t = Timing::new(start);
        t.mark("auth");
        t.mark_split("queue", Duration::from_secs(3600), "dispatch");
        let v = t.value();
        let names: Vec<&str> = v
            .split(", ")
            .map(|p| p.split_once(";dur=").unwrap().0)
            .collect();
        assert_eq!(names, ["auth", "queue", "dispatch", "total"]);
        assert!(
            v.contains("dispatch;dur=0.000"),
            "a split never exceeds the time since the last mark: {v}"
        );
        for p in v.split(", ") {
            let ms: f64 = p.split_once(";dur=").unwrap().1.parse().unwrap();
            assert!(ms >= 0.0);
        }
        assert!(t.header().is_some());
    }
}
