//! The one Prometheus text-exposition reader of the tests: a strict
//! parser (a malformed line fails) and a lookup of a metric's value.

use std::collections::{BTreeSet, HashMap};

/// One sample: name, labels, value.
pub type Sample = (String, HashMap<String, String>, f64);

/// Parses the text exposition strictly enough that a malformed line fails:
/// `# HELP`/`# TYPE`/`# EOF` comments and `name{label="value",…} number`.
pub fn parse(text: &str) -> Result<(Vec<Sample>, BTreeSet<String>), String> {
    let mut samples = Vec::new();
    let mut typed = BTreeSet::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else { return Err(line.into()) };
            if !["counter", "gauge", "histogram", "info", "unknown"].contains(&kind) {
                return Err(format!("unknown type: {line}"));
            }
            typed.insert(name.to_string());
            continue;
        }
        if line.starts_with("# HELP ") || line == "# EOF" {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| format!("no value: {line}"))?;
        let value: f64 = value.parse().map_err(|_| format!("bad value: {line}"))?;
        let (name, labels) = match series.split_once('{') {
            None => (series, HashMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').ok_or_else(|| format!("unclosed labels: {line}"))?;
                let mut labels = HashMap::new();
                for pair in body.split(',').filter(|p| !p.is_empty()) {
                    let (key, quoted) = pair.split_once('=').ok_or_else(|| format!("bad label: {line}"))?;
                    let value = quoted.strip_prefix('"').and_then(|v| v.strip_suffix('"'));
                    labels.insert(key.to_string(), value.ok_or_else(|| format!("unquoted: {line}"))?.to_string());
                }
                (name, labels)
            }
        };
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            return Err(format!("bad metric name: {line}"));
        }
        samples.push((name.to_string(), labels, value));
    }
    Ok((samples, typed))
}

/// The sum of the samples of `name` (exactly that series name) whose line
/// contains every one of `filters` (e.g. `method="Increment"`, `not_sent`);
/// `None` when no sample matched.
pub fn sum(text: &str, name: &str, filters: &[&str]) -> Option<f64> {
    let matching: Vec<f64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name) && filters.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# TYPE a counter\na_total{m=\"x\",r=\"1\"} 2\na_total{m=\"y\"} 3\na_total_more 7\n";

    #[test]
    fn sums_exactly_the_named_series_that_match() {
        assert_eq!(sum(TEXT, "a_total", &[]), Some(5.0));
        assert_eq!(sum(TEXT, "a_total", &["m=\"x\""]), Some(2.0));
        assert_eq!(sum(TEXT, "a_total_more", &[]), Some(7.0));
        assert_eq!(sum(TEXT, "b_total", &[]), None);
    }

    #[test]
    fn parses_strictly() {
        let (samples, typed) = parse(TEXT).expect("valid");
        assert_eq!((samples.len(), typed.len()), (3, 1));
        assert!(parse("a{m=x} 1").is_err(), "unquoted label value");
        assert!(parse("a 1 2 x").is_err(), "bad value");
    }
}
