//! With Redis, every replica also appends its records to one capped Redis
//! Stream (`XADD <prefix>audit MAXLEN ~ N`), which the audit API reads for
//! the whole cluster. Entries carry the record's JSON line and, for cheap
//! filtering, its client and tenant. Stream ids (`<ms>-<seq>`) order the
//! records and are the API's cursors.

use std::time::Duration;

use tollgate_shared::store::{Redis, StoreError};

use super::query::{AuditQuery, Line, Page};

/// The stream's key, under the configured prefix.
pub const STREAM_KEY: &str = "audit";
/// Entries read per `XREVRANGE` while filling a page.
const SCAN_BATCH: usize = 256;
/// Entries one page may scan before it stops and hands out a cursor.
const SCAN_BUDGET: usize = 10_000;
/// Pauses before a failed batch is sent again; after the last it is dropped.
pub const RETRY_PAUSES: [Duration; 3] = [
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
];

/// Appends a batch in one pipeline, as one transaction (one XADD is one
/// already): a batch whose connection breaks is in the stream whole or not
/// at all, so the writer's count of dropped records is exact.
pub async fn append(redis: &Redis, max_len: u64, lines: &[&Line]) -> Result<(), StoreError> {
    let key = redis.key(STREAM_KEY);
    let mut pipe = redis::pipe();
    if lines.len() > 1 {
        pipe.atomic();
    }
    for l in lines {
        let cmd = pipe
            .cmd("XADD")
            .arg(&key)
            .arg("MAXLEN")
            .arg("~")
            .arg(max_len)
            .arg("*")
            .arg("r")
            .arg(&l.json);
        if let Some(c) = &l.client_id {
            cmd.arg("c").arg(c);
        }
        if let Some(t) = &l.tenant {
            cmd.arg("t").arg(t);
        }
        cmd.ignore();
    }
    redis.pipe::<()>(&pipe).await
}

/// A stream id given as a cursor: `<ms>-<seq>`, digits only.
fn valid_id(s: &str) -> bool {
    s.split_once('-').is_some_and(|(ms, seq)| {
        !ms.is_empty()
            && !seq.is_empty()
            && ms.bytes().all(|b| b.is_ascii_digit())
            && seq.bytes().all(|b| b.is_ascii_digit())
    })
}

/// The page `q` asks for, newest first. `Ok(None)`: the cursor is not a stream id.
pub async fn query(redis: &Redis, q: &AuditQuery) -> Result<Option<Page>, StoreError> {
    let key = redis.key(STREAM_KEY);
    // A cursor came from a page of the same query, so it is within `until`.
    let mut end = match &q.cursor {
        Some(c) if valid_id(c) => format!("({c}"),
        Some(_) => return Ok(None),
        None => q.until_ms.map_or_else(|| "+".to_owned(), |u| u.to_string()),
    };
    let start = q.since_ms.map_or_else(|| "-".to_owned(), |s| s.to_string());
    let mut page = Page {
        source: "redis",
        ..Page::default()
    };
    let mut scanned = 0;
    loop {
        let entries: Vec<(String, Vec<String>)> = redis
            .query(
                redis::cmd("XREVRANGE")
                    .arg(&key)
                    .arg(&end)
                    .arg(&start)
                    .arg("COUNT")
                    .arg(SCAN_BATCH),
            )
            .await?;
        let exhausted = entries.len() < SCAN_BATCH;
        for (id, fields) in entries {
            if page.lines.len() == q.limit || scanned == SCAN_BUDGET {
                return Ok(Some(page));
            }
            scanned += 1;
            let (mut json, mut client, mut tenant) = (None, None, None);
            for pair in fields.chunks_exact(2) {
                match pair[0].as_str() {
                    "r" => json = Some(pair[1].clone()),
                    "c" => client = Some(pair[1].as_str()),
                    "t" => tenant = Some(pair[1].as_str()),
                    _ => {}
                }
            }
            if let Some(json) = json
                && q.matches(client, tenant)
            {
                page.lines.push(json);
            }
            end = format!("({id}");
            page.next_cursor = Some(id);
        }
        if exhausted {
            page.next_cursor = None;
            return Ok(Some(page));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_shared::testing::RedisServer;

    fn line(i: u64, client: &str) -> Line {
        Line {
            ts_ms: i,
            client_id: Some(client.into()),
            tenant: Some("acme".into()),
            json: format!("{{\"n\":{i}}}"),
        }
    }

    async fn all_pages(redis: &Redis, mut q: AuditQuery) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let page = query(redis, &q).await.unwrap().unwrap();
            assert!(page.lines.len() <= q.limit);
            seen.extend(page.lines);
            match page.next_cursor {
                Some(c) => q.cursor = Some(c),
                None => return seen,
            }
        }
    }

    #[tokio::test]
    async fn pages_through_a_real_stream_newest_first() {
        let server = RedisServer::start();
        let redis = Redis::new(&server.config("t:")).unwrap();
        let lines: Vec<_> = (0..600)
            .map(|i| line(i, if i % 3 == 0 { "c0" } else { "cx" }))
            .collect();
        let refs: Vec<&Line> = lines.iter().collect();
        append(&redis, 100_000, &refs).await.unwrap();

        let q = AuditQuery {
            client_id: Some("c0".into()),
            limit: 7,
            ..Default::default()
        };
        let seen = all_pages(&redis, q).await;
        let expected: Vec<String> = (0..600)
            .rev()
            .filter(|i| i % 3 == 0)
            .map(|i| format!("{{\"n\":{i}}}"))
            .collect();
        assert_eq!(seen, expected);

        let q = AuditQuery {
            tenant: Some("acme".into()),
            limit: 1000,
            ..Default::default()
        };
        assert_eq!(all_pages(&redis, q).await.len(), 600);

        let q = AuditQuery {
            cursor: Some("not-an-id".into()),
            limit: 1,
            ..Default::default()
        };
        assert!(query(&redis, &q).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn the_stream_is_capped() {
        let server = RedisServer::start();
        let redis = Redis::new(&server.config("t:")).unwrap();
        for chunk in (0..3000).collect::<Vec<u64>>().chunks(500) {
            let lines: Vec<_> = chunk.iter().map(|&i| line(i, "c")).collect();
            let refs: Vec<&Line> = lines.iter().collect();
            append(&redis, 1000, &refs).await.unwrap();
        }
        let len: u64 = redis
            .query(redis::cmd("XLEN").arg(redis.key(STREAM_KEY)))
            .await
            .unwrap();
        // `~` trims by whole macro nodes: about 1000, never the full 3000.
        assert!((1000..2000).contains(&len), "{len}");
    }
}
