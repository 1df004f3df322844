//! A gRPC call's deadline, as its client sent it in the `grpc-timeout`
//! header (gRPC over HTTP/2: 1 to 8 ASCII digits and a unit, `H`ours,
//! `M`inutes, `S`econds, `m`illiseconds, `u`microseconds or `n`anoseconds).
//! A header that does not parse is ignored, as tonic's and grpc-go's
//! servers do: the call then runs without a deadline of its own.

use std::time::Duration;

use http::HeaderMap;

const GRPC_TIMEOUT: &str = "grpc-timeout";

/// The time the client gave the call, if it gave one that parses.
pub fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    parse(headers.get(GRPC_TIMEOUT)?.as_bytes())
}

fn parse(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // At most 8 digits: fits a u64 with room for the unit's factor.
    let amount = digits.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(amount * 3600),
        b'M' => Duration::from_secs(amount * 60),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit_of_the_spec_parses() {
        assert_eq!(parse(b"2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse(b"3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse(b"5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse(b"250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse(b"7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse(b"99999999n"), Some(Duration::from_nanos(99_999_999)));
        assert_eq!(parse(b"99999999H"), Some(Duration::from_secs(99_999_999 * 3600)));
    }

    #[test]
    fn malformed_values_mean_no_deadline() {
        for value in [&b""[..], b"S", b"10", b"10s", b"123456789S", b"-1S", b"1.5S", b" 1S", b"1 S"] {
            assert_eq!(parse(value), None, "{:?}", String::from_utf8_lossy(value));
        }
    }

    #[test]
    fn read_from_the_request_headers() {
        let mut headers = HeaderMap::new();
        assert_eq!(grpc_timeout(&headers), None);
        headers.insert(GRPC_TIMEOUT, http::HeaderValue::from_static("1500m"));
        assert_eq!(grpc_timeout(&headers), Some(Duration::from_millis(1500)));
    }
}
