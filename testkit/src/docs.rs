//! Reading the settings tables of `docs/configuration.md`, so each service
//! can check its `clap` definitions against what the documentation says.

/// Every table row whose first cell names settings: (the backticked names
/// in the first cell, the second cell as written).
pub fn settings_rows(markdown: &str) -> Vec<(Vec<String>, String)> {
    markdown
        .lines()
        .filter(|line| line.starts_with("| `"))
        .filter_map(|line| {
            let mut cells = line.split('|').skip(1);
            let (names, default) = (cells.next()?, cells.next()?);
            Some((backticked(names), default.trim().to_string()))
        })
        .collect()
}

/// The backticked tokens of a cell.
pub fn backticked(cell: &str) -> Vec<String> {
    cell.split('`').skip(1).step_by(2).map(str::to_string).collect()
}

/// Checks that every `(env, default)` of a service is documented in
/// `markdown`'s settings tables, with its default among the backticked
/// values of a row naming it; returns every mismatch, for one message.
pub fn undocumented<'a>(markdown: &str, settings: impl IntoIterator<Item = (&'a str, Option<String>)>) -> Vec<String> {
    let rows = settings_rows(markdown);
    let mut problems = Vec::new();
    for (env, default) in settings {
        let naming: Vec<&(Vec<String>, String)> =
            rows.iter().filter(|(names, _)| names.iter().any(|n| n == env)).collect();
        if naming.is_empty() {
            problems.push(format!("{env} is not in docs/configuration.md"));
            continue;
        }
        if let Some(default) = default
            && !naming.iter().any(|(_, cell)| backticked(cell).contains(&default))
        {
            let cells: Vec<&str> = naming.iter().map(|(_, cell)| cell.as_str()).collect();
            problems.push(format!("{env}: default {default:?} in code, documented as {cells:?}"));
        }
    }
    problems
}

/// [`undocumented`] for every setting of a `clap` command: each argument
/// read from an environment variable, with its default.
pub fn undocumented_settings_of(command: &clap::Command, markdown: &str) -> Vec<String> {
    let settings: Vec<(String, Option<String>)> = command
        .get_arguments()
        .filter_map(|arg| {
            let env = arg.get_env()?.to_string_lossy().to_string();
            let default = arg.get_default_values().first().map(|d| d.to_string_lossy().to_string());
            Some((env, default))
        })
        .collect();
    assert!(!settings.is_empty(), "no settings read from {}", command.get_name());
    undocumented(markdown, settings.iter().map(|(env, default)| (env.as_str(), default.clone())))
}

/// Asserts every setting of `command` is in the workspace's
/// `docs/configuration.md` with its default ([`undocumented_settings_of`]).
pub fn assert_settings_documented(command: &clap::Command) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
    let docs = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let problems = undocumented_settings_of(command, &docs);
    assert!(problems.is_empty(), "docs/configuration.md and the code disagree:\n{}", problems.join("\n"));
}

/// Both checks of a service's settings against docs/configuration.md:
/// [`assert_settings_documented`] and [`assert_live_settings_documented`].
pub fn assert_service_settings_documented(command: &clap::Command, live: &[&str], table: &str) {
    assert_settings_documented(command);
    assert_live_settings_documented(command, live, table);
}

/// Asserts every name of a service's `live` list is one of `command`'s
/// settings, and is named in docs/configuration.md's "Live settings"
/// tables, and that those tables name no other setting of the service as
/// live for it (the shared table counts for both services).
pub fn assert_live_settings_documented(command: &clap::Command, live: &[&str], table: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
    let docs = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let section = docs.split("## Live settings").nth(1).unwrap_or_else(|| panic!("no Live settings section"));
    let mut documented: Vec<String> = Vec::new();
    for block in section.split("\n\n").filter(|b| b.starts_with("| live in both") || b.starts_with(table)) {
        for (names, _) in settings_rows(block) {
            documented.extend(names);
        }
    }
    for name in live {
        assert!(
            command.get_arguments().any(|arg| arg.get_env() == Some(std::ffi::OsStr::new(name))),
            "{name} is listed as live but is not a setting of {}",
            command.get_name()
        );
    }
    let mut listed: Vec<String> = live.iter().map(|s| s.to_string()).collect();
    listed.sort();
    documented.sort();
    assert_eq!(listed, documented, "live settings in code and in docs/configuration.md ({table})");
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "| env var | default | meaning |\n|---|---|---|\n\
        | `TALLY_A` / `TALLY_B` | `10` / `20` | two |\n| `TALLY_C` | unset | none |\n";

    #[test]
    fn rows_name_their_settings_and_defaults() {
        let rows = settings_rows(DOC);
        assert_eq!(rows[0], (vec!["TALLY_A".to_string(), "TALLY_B".to_string()], "`10` / `20`".to_string()));
        assert_eq!(rows.len(), 2);
    }

    #[test]
    fn mismatches_are_reported() {
        let ok = undocumented(DOC, [("TALLY_A", Some("20".to_string())), ("TALLY_C", None)]);
        assert!(ok.is_empty(), "{ok:?}");
        let bad = undocumented(DOC, [("TALLY_A", Some("30".to_string())), ("TALLY_D", None)]);
        assert_eq!(bad.len(), 2, "{bad:?}");
    }
}
