//! Keeps credentials out of logs, errors and status output.
//!
//! Settings such as `TALLY_STORE=redis://:S3cret@host:6379` carry a password
//! in the URL's user-info, and library errors (redis-rs, reqwest) repeat the
//! URL they were given. Everything that may contain such a URL goes through
//! [`userinfo`] before it is logged, returned or shown.

use std::borrow::Cow;

/// What replaces a URL's user-info.
pub const MASK: &str = "***";

/// `text` with the user-info of every `scheme://user:password@host` in it
/// replaced by [`MASK`] (`redis://***@host:6379`). A URL ends at whitespace
/// or a quote; everything from `://` up to its last `@` is masked, so a
/// password containing `@`, `:`, `/`, `?` or `#` (which make the URL
/// unparseable, exactly when it is logged in an error) is covered too, as
/// is `redis+cluster://:pw@a:1,b:2`. A path containing `@` masks the host
/// as well: too much rather than too little.
pub fn userinfo(text: &str) -> Cow<'_, str> {
    if !text.contains("://") || !text.contains('@') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let end = tail.find(|c: char| matches!(c, '"' | '\'' | '`') || c.is_whitespace());
        let authority = &tail[..end.unwrap_or(tail.len())];
        match authority.rfind('@') {
            Some(user_end) => {
                out.push_str(MASK);
                out.push_str(&authority[user_end..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[authority.len()..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_info_is_masked() {
        assert_eq!(userinfo("redis://:S3cret@h:6379/0"), "redis://***@h:6379/0");
        assert_eq!(userinfo("rediss://user:p@ss:w@h:1"), "rediss://***@h:1");
        assert_eq!(userinfo("redis+cluster://:pw@a:1,b:2"), "redis+cluster://***@a:1,b:2");
        assert_eq!(userinfo(r#"bad "redis://u:x@h" and http://a:b@c/d"#), r#"bad "redis://***@h" and http://***@c/d"#);
        // Passwords with URL delimiters in them (the URL does not parse, so it is logged in an error).
        assert_eq!(userinfo("redis://:pa/ss@h:6379: invalid"), "redis://***@h:6379: invalid");
        assert_eq!(userinfo("redis://:p?a#s@h:1"), "redis://***@h:1");
    }

    #[test]
    fn text_without_user_info_is_unchanged() {
        for text in ["redis://h:6379", "memory", "mail me@example.com", "http://h/p", ""] {
            assert_eq!(userinfo(text), text);
            assert!(matches!(userinfo(text), Cow::Borrowed(_)) || text.contains("://"));
        }
    }
}
