//! A query of the audit trail (`GET /v1/admin/audit`): filters, page size,
//! cursor, and the page of records it answers with. Pages run newest first;
//! a cursor names the last record a page scanned, the next page starts
//! after it.

use super::record::parse_rfc3339_ms;

/// Records a page holds unless `limit` says otherwise.
pub const DEFAULT_LIMIT: usize = 100;
/// The largest page.
pub const MAX_LIMIT: usize = 1000;

/// A stored record with what the filters look at, and its JSON line.
#[derive(Debug, Clone)]
pub struct Line {
    pub ts_ms: u64,
    pub client_id: Option<String>,
    pub tenant: Option<String>,
    pub json: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    pub client_id: Option<String>,
    pub tenant: Option<String>,
    /// Unix milliseconds, inclusive.
    pub since_ms: Option<u64>,
    /// Unix milliseconds, inclusive.
    pub until_ms: Option<u64>,
    pub limit: usize,
    pub cursor: Option<String>,
}

/// A query's parameters as the URL gives them.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RawQuery {
    /// Only this client's records.
    pub client_id: Option<String>,
    /// Only this tenant's records.
    pub tenant: Option<String>,
    /// From this time on: RFC 3339 UTC (`2026-11-25T01:02:03Z`) or Unix seconds; not after `until`.
    pub since: Option<String>,
    /// Up to this time, in the same forms.
    pub until: Option<String>,
    /// Records a page, 1 to 1000 (default 100).
    pub limit: Option<usize>,
    /// The previous page's `next_cursor`.
    pub cursor: Option<String>,
}

/// Why a query is refused: (parameter, message).
pub type QueryError = (&'static str, String);

/// A time as RFC 3339 (UTC) or Unix seconds.
fn parse_time(param: &'static str, s: &str) -> Result<u64, QueryError> {
    if let Ok(secs) = s.parse::<u64>() {
        return secs
            .checked_mul(1000)
            .ok_or((param, format!("`{param}` is out of range")));
    }
    parse_rfc3339_ms(s).ok_or((
        param,
        format!("`{param}` must be an RFC 3339 UTC time (2026-11-25T01:02:03Z) or Unix seconds"),
    ))
}

impl AuditQuery {
    pub fn parse(raw: RawQuery) -> Result<AuditQuery, QueryError> {
        // An empty parameter is no filter, as for the others.
        let since_ms = raw
            .since
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(|s| parse_time("since", s))
            .transpose()?;
        let until_ms = raw
            .until
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(|s| parse_time("until", s))
            .transpose()?;
        if let (Some(s), Some(u)) = (since_ms, until_ms)
            && s > u
        {
            return Err(("since", "`since` is after `until`".into()));
        }
        let limit = raw.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err((
                "limit",
                format!("`limit` must be between 1 and {MAX_LIMIT}"),
            ));
        }
        let nonempty = |v: Option<String>| v.filter(|s| !s.is_empty());
        Ok(AuditQuery {
            client_id: nonempty(raw.client_id),
            tenant: nonempty(raw.tenant),
            since_ms,
            until_ms,
            limit,
            cursor: nonempty(raw.cursor),
        })
    }

    /// Whether a record passes the client and tenant filters (the time
    /// range is each store's own business: it is how they are indexed).
    pub fn matches(&self, client_id: Option<&str>, tenant: Option<&str>) -> bool {
        self.client_id
            .as_deref()
            .is_none_or(|c| client_id == Some(c))
            && self.tenant.as_deref().is_none_or(|t| tenant == Some(t))
    }

    pub fn in_time(&self, ts_ms: u64) -> bool {
        self.since_ms.is_none_or(|s| ts_ms >= s) && self.until_ms.is_none_or(|u| ts_ms <= u)
    }
}

/// One page of records, newest first.
#[derive(Debug, Default)]
pub struct Page {
    /// JSON lines, as written.
    pub lines: Vec<String>,
    /// Where the next page starts; `None` at the end.
    pub next_cursor: Option<String>,
    /// `redis` (every replica's records) or `memory` (this process's latest).
    pub source: &'static str,
}

impl Page {
    /// The page as the API answers it: the records as JSON objects.
    pub fn to_json(&self) -> String {
        let mut out =
            String::with_capacity(64 + self.lines.iter().map(|l| l.len() + 1).sum::<usize>());
        out.push_str("{\"object\":\"list\",\"data\":[");
        out.push_str(&self.lines.join(","));
        out.push_str("],\"next_cursor\":");
        out.push_str(&serde_json::to_string(&self.next_cursor).unwrap_or_else(|_| "null".into()));
        out.push_str(",\"source\":\"");
        out.push_str(self.source);
        out.push_str("\"}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> RawQuery {
        RawQuery::default()
    }

    #[test]
    fn parameters_are_checked() {
        let q = AuditQuery::parse(RawQuery {
            since: Some("2026-11-25T00:00:00Z".into()),
            until: Some("1795600000".into()),
            tenant: Some("acme".into()),
            client_id: Some(String::new()),
            ..raw()
        })
        .unwrap();
        assert_eq!(q.since_ms, Some(1_795_564_800_000));
        assert_eq!(q.until_ms, Some(1_795_600_000_000));
        assert_eq!(q.limit, DEFAULT_LIMIT);
        assert_eq!(q.client_id, None, "an empty filter is no filter");
        let bad = |r: RawQuery| AuditQuery::parse(r).unwrap_err().0;
        assert_eq!(
            bad(RawQuery {
                limit: Some(0),
                ..raw()
            }),
            "limit"
        );
        assert_eq!(
            bad(RawQuery {
                limit: Some(MAX_LIMIT + 1),
                ..raw()
            }),
            "limit"
        );
        assert_eq!(
            bad(RawQuery {
                since: Some("yesterday".into()),
                ..raw()
            }),
            "since"
        );
        assert_eq!(
            bad(RawQuery {
                since: Some("20".into()),
                until: Some("10".into()),
                ..raw()
            }),
            "since"
        );
    }

    #[test]
    fn filters() {
        let q = AuditQuery {
            client_id: Some("c1".into()),
            since_ms: Some(10),
            until_ms: Some(20),
            ..Default::default()
        };
        assert!(q.matches(Some("c1"), None));
        assert!(!q.matches(Some("c2"), None));
        assert!(!q.matches(None, Some("t")));
        assert!(q.in_time(10) && q.in_time(20) && !q.in_time(21) && !q.in_time(9));
    }

    #[test]
    fn a_page_is_one_json_object() {
        let p = Page {
            lines: vec!["{\"a\":1}".into(), "{\"b\":2}".into()],
            next_cursor: Some("12-0".into()),
            source: "memory",
        };
        let v: serde_json::Value = serde_json::from_str(&p.to_json()).unwrap();
        assert_eq!(v["data"][1]["b"], 2);
        assert_eq!(v["next_cursor"], "12-0");
    }
}
