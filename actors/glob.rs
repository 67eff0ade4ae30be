//! One small glob matcher (`*` and `?`, no classes), shared by the Redis actor (key patterns
//! that are not restored) and the volume actor (cleanup's file-name patterns).

/// Redis-style glob (`*`, `?`, no classes).
pub(crate) fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Whether a pattern is nothing but wildcards (`*`, `?*`, `???`): it would match (nearly)
/// every name, which no cleanup pattern may do.
pub(crate) fn only_wildcards(pattern: &str) -> bool {
    pattern.chars().all(|c| c == '*' || c == '?')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases() {
        let cases = [
            ("lucid:locks:lock:*", "lucid:locks:lock:x", true),
            ("lucid:locks:lock:*", "lucid:locks:fence:x", false),
            ("lucid:ratelimit:*", "lucid:ratelimit:ip:1.2.3.4", true),
            ("lucid:*:lock:?", "lucid:a:lock:b", true),
            ("lucid:*:lock:?", "lucid:a:lock:bc", false),
            ("*", "", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
        ];
        for (p, t, want) in cases {
            assert_eq!(glob_match(p, t), want, "{p} ~ {t}");
        }
        for p in ["*", "**", "?*", "*?", "???", ""] {
            assert!(only_wildcards(p), "{p}");
        }
        assert!(!only_wildcards("*.tmp"));
    }
}
