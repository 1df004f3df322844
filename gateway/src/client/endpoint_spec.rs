//! Endpoint specs as discovery and settings give them: the URI an
//! endpoint is dialled at, its `;weight=N` suffix, and how a new list of
//! endpoints maps onto the known ones. Pure decisions, tested without
//! connections; [`super::backends`] applies them.

use tally_runtime::redact;

use super::backends::BackendError;

/// The URI an endpoint is dialled at: with TLS to the counters configured,
/// every endpoint is TLS (discovery yields `http://` addresses; they are
/// shown and dialled as `https://`); without it, `https://` cannot work.
/// A bare `host:port` is taken as `http://host:port`, the way Envoy and
/// Linkerd take addresses; any other scheme is refused here, at startup or
/// discovery, rather than failing every connection attempt later.
pub(super) fn dial_uri(uri: &str, tls: bool) -> Result<String, &'static str> {
    let rest = match uri.split_once("://") {
        None => uri,
        Some(("http", rest)) => rest,
        Some(("https", rest)) if tls => rest,
        Some(("https", _)) => {
            return Err(
                "https:// endpoints need TALLY_COUNTER_TLS_CA_FILE (the CA the counters' certificates chain to)",
            );
        }
        Some(_) => return Err("the scheme must be http:// or https:// (or none: host:port)"),
    };
    if rest.is_empty() || rest.contains('/') {
        return Err("expected host:port (optionally after http:// or https://)");
    }
    Ok(format!("{}://{rest}", if tls { "https" } else { "http" }))
}

/// How to get from the known endpoints to the wanted ones (indices into
/// the known list for `keep` and `remove`).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct UpdatePlan<'a> {
    pub keep: Vec<usize>,
    pub add: Vec<(&'a str, u32)>,
    pub remove: Vec<usize>,
}

pub(super) fn plan_update<'a>(known: &[(&str, u32)], wanted: &[(&'a str, u32)]) -> UpdatePlan<'a> {
    let keep: Vec<usize> = (0..known.len()).filter(|&i| wanted.contains(&known[i])).collect();
    let remove: Vec<usize> = (0..known.len()).filter(|i| !keep.contains(i)).collect();
    let mut add: Vec<(&'a str, u32)> = Vec::new();
    for w in wanted {
        if !known.contains(w) && !add.contains(w) {
            add.push(*w);
        }
    }
    UpdatePlan { keep, add, remove }
}

/// `http://h:p;weight=3` → (`http://h:p`, 3); no suffix → weight 1.
pub(super) fn parse_weight(spec: &str) -> Result<(&str, u32), BackendError> {
    match spec.split_once(";weight=") {
        None => Ok((spec, 1)),
        Some((uri, weight)) => match weight.parse::<u32>() {
            Ok(w) if (1..=1000).contains(&w) => Ok((uri, w)),
            _ => Err(BackendError::InvalidUri {
                uri: redact::userinfo(spec).into_owned(),
                reason: "weight must be 1..=1000".into(),
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_dialled_with_tls_exactly_when_it_is_configured() {
        assert_eq!(dial_uri("http://10.0.0.1:9001", true).unwrap(), "https://10.0.0.1:9001");
        assert_eq!(dial_uri("https://c:9001", true).unwrap(), "https://c:9001");
        assert_eq!(dial_uri("http://c:9001", false).unwrap(), "http://c:9001");
        assert!(dial_uri("https://c:9001", false).unwrap_err().contains("TALLY_COUNTER_TLS_CA_FILE"));
    }

    #[test]
    fn bare_addresses_are_http_and_other_schemes_are_refused() {
        assert_eq!(dial_uri("127.0.0.1:9001", false).unwrap(), "http://127.0.0.1:9001");
        assert_eq!(dial_uri("c:9001", true).unwrap(), "https://c:9001");
        assert!(dial_uri("grpc://c:9001", false).unwrap_err().contains("scheme"));
        assert!(dial_uri("http://", false).is_err());
        assert!(dial_uri("http://c:9001/path", false).is_err());
    }

    #[test]
    fn updates_keep_known_endpoints_add_new_and_drop_gone() {
        let known = [("http://a:1", 1), ("http://b:1", 1), ("http://c:1", 2)];
        let wanted = [("http://c:1", 2), ("http://d:1", 1), ("http://a:1", 1), ("http://d:1", 1)];
        let plan = plan_update(&known, &wanted);
        assert_eq!(plan, UpdatePlan { keep: vec![0, 2], add: vec![("http://d:1", 1)], remove: vec![1] });
        // A changed weight is a new endpoint.
        let plan = plan_update(&known, &[("http://a:1", 5)]);
        assert_eq!(plan, UpdatePlan { keep: vec![], add: vec![("http://a:1", 5)], remove: vec![0, 1, 2] });
    }

    #[test]
    fn weights_in_endpoint_specs() {
        assert_eq!(parse_weight("http://a:1").unwrap(), ("http://a:1", 1));
        assert_eq!(parse_weight("http://a:1;weight=7").unwrap(), ("http://a:1", 7));
        assert!(parse_weight("http://a:1;weight=0").is_err());
        assert!(parse_weight("http://a:1;weight=x").is_err());
    }
}
