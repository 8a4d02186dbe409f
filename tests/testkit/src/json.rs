//! Lookups in the JSON dispatchd prints (`ctl stats --json`), for assertions:
//! a missing key is a failed test, not a zero.
pub use serde_json::Value;

/// The unsigned number at JSON pointer `pointer` (such as `/workers/0/flows`).
pub fn u64_at(doc: &Value, pointer: &str) -> u64 {
    doc.pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no number at {pointer} in {doc}"))
}

/// Every number named `key` anywhere in `doc`, summed: a per-worker counter over
/// all workers, a name that both the XDP program and the workers count over both.
pub fn sum_of(doc: &Value, key: &str) -> u64 {
    fn walk(v: &Value, key: &str, found: &mut Option<u64>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    match v.as_u64() {
                        Some(n) if k == key => *found = Some(found.unwrap_or(0) + n),
                        _ => walk(v, key, found),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, key, found)),
            _ => {}
        }
    }
    let mut found = None;
    walk(doc, key, &mut found);
    found.unwrap_or_else(|| panic!("no {key} in {doc}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointer_and_sum_follow_the_stats_shape() {
        let doc: Value = serde_json::from_str(
            r#"{"workers":[{"worker":0,"flows":2,"table_full":1,"dropped_by_reason":{"table_full":1}},
                           {"worker":1,"flows":3,"table_full":0,"dropped_by_reason":{"table_full":0}}],
                "xdp":{"ipv6":4},"connections":5}"#,
        )
        .unwrap();
        assert_eq!(u64_at(&doc, "/connections"), 5);
        assert_eq!(u64_at(&doc, "/workers/1/flows"), 3);
        assert_eq!(sum_of(&doc, "flows"), 5);
        assert_eq!(sum_of(&doc, "table_full"), 2);
        assert_eq!(sum_of(&doc, "ipv6"), 4);
    }

    #[test]
    #[should_panic(expected = "no nope")]
    fn a_missing_key_fails() {
        sum_of(&serde_json::json!({"workers": []}), "nope");
    }
}
