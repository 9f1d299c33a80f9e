//! Identifiers: request ids are W3C trace ids, so the audit record, the span
//! and the `x-request-id` header all name a request the same way.

use std::fmt;

/// 128-bit id printed as 32 lowercase hex digits (a W3C trace id).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(u128);

impl RequestId {
    pub fn new() -> Self {
        // The thread's CSPRNG (ChaCha, seeded from the OS): random as the OS's
        // bits are, without a system call per request. Never all zero, as a
        // trace id must not be.
        loop {
            let id: u128 = rand::random();
            if id != 0 {
                return RequestId(id);
            }
        }
    }

    /// Parses a W3C `traceparent` header and returns its trace id.
    pub fn from_traceparent(header: &str) -> Option<Self> {
        let mut parts = header.trim().split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let span = parts.next()?;
        let _flags = parts.next()?;
        if version.len() != 2 || version == "ff" || trace.len() != 32 || span.len() != 16 {
            return None;
        }
        let id = u128::from_str_radix(trace, 16).ok()?;
        (id != 0
            && trace
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
        .then_some(RequestId(id))
    }

    /// A `traceparent` header for a child call made under this trace.
    pub fn traceparent(&self) -> String {
        let span = rand::random::<u64>() | 1;
        format!("00-{self}-{span:016x}-01")
    }
}

impl Default for RequestId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trip() {
        let id = RequestId::new();
        let tp = id.traceparent();
        assert_eq!(RequestId::from_traceparent(&tp), Some(id));
        assert_eq!(id.to_string().len(), 32);
    }

    #[test]
    fn bad_traceparents_are_refused() {
        for bad in [
            "",
            "00-00000000000000000000000000000000-0123456789abcdef-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b71-01",
        ] {
            assert_eq!(RequestId::from_traceparent(bad), None, "{bad}");
        }
    }
}
