//! The request policy: what the daemon may do with a request, whatever protocol carried it.

/// Whether sending a request twice has the effect of sending it once (RFC 9110 §9.2.2): such a request
/// may go again when its connection closed before any of its answer came, processed or not.
pub fn is_idempotent(method: &[u8]) -> bool {
    matches!(
        method,
        b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_idempotent_methods_may_go_twice() {
        for method in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
            assert!(is_idempotent(method.as_bytes()), "{method}");
        }
        for method in ["POST", "PATCH", "CONNECT", "get", "PROPFIND", ""] {
            assert!(!is_idempotent(method.as_bytes()), "{method}");
        }
    }
}
