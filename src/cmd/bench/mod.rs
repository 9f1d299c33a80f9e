//! `tollgate bench`: load generators.
//!
//! - `closed`: N clients back to back against one URL or round-robin over
//!   several (gateway overhead vs a bare shard, per-stage timings)
//! - `open`: an open-loop multi-tenant scenario (Poisson arrivals per tenant)
//! - `report`: per-tenant statistics, Jain's fairness index, JSON and an SVG chart

mod closed;
mod open;
mod report;

use std::path::PathBuf;
use std::time::Duration;

use super::CmdResult;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// An open-loop multi-tenant scenario (TOML; see docs/scheduling.md).
    /// Without it, a closed loop runs against --url.
    #[arg(long, conflicts_with = "url")]
    scenario: Option<PathBuf>,
    /// Directory for the open-loop report (report.json, service.svg).
    #[arg(long, default_value = "bench-report")]
    out: PathBuf,
    #[command(flatten)]
    closed: closed::ClosedArgs,
}

pub async fn run(args: BenchArgs) -> CmdResult {
    match args.scenario {
        Some(path) => open::run(&path, &args.out).await,
        None => closed::run(args.closed).await,
    }
}

/// Gets an access token by client credentials (HTTP Basic).
async fn token(
    http: &reqwest::Client,
    url: &str,
    id: &str,
    secret: &str,
) -> anyhow::Result<String> {
    #[derive(serde::Deserialize)]
    struct Token {
        access_token: String,
    }
    let resp = http
        .post(format!("{url}/oauth/token"))
        .basic_auth(id, Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await?
        .error_for_status()?;
    Ok(resp.json::<Token>().await?.access_token)
}

/// The `p`th percentile (nearest rank) of sorted durations, in milliseconds.
fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}

/// The gateway's `x-tollgate-timing` header of an answer, if it has one.
fn timing_header(resp: &reqwest::Response) -> Option<&str> {
    resp.headers()
        .get("x-tollgate-timing")
        .and_then(|v| v.to_str().ok())
}

/// The `name;dur=ms` entries of a Server-Timing style header, in order.
fn timings(h: &str) -> impl Iterator<Item = (&str, f64)> {
    h.split(',').filter_map(|part| {
        let mut fields = part.split(';').map(str::trim);
        let name = fields.next().filter(|n| !n.is_empty())?;
        let ms = fields.find_map(|f| f.strip_prefix("dur="))?.parse().ok()?;
        Some((name, ms))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_header_splits_into_stages() {
        let h = "auth;dur=0.120, validate;dur=0.050,limit;dur=0.300, dispatch;desc=\"q\";dur=41.7, relay;dur=x, ;dur=1, total;dur=42.17";
        let got: Vec<(&str, f64)> = timings(h).collect();
        assert_eq!(
            got,
            [
                ("auth", 0.12),
                ("validate", 0.05),
                ("limit", 0.3),
                ("dispatch", 41.7),
                ("total", 42.17)
            ]
        );
        assert_eq!(timings("").count(), 0);
        assert_eq!(timings("limit").count(), 0);
    }
}
