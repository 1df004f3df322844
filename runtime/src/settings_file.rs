//! Settings from a file of `KEY=value` lines, the same names as the
//! environment variables: how the operator hands settings to its pods.
//!
//! Kubernetes updates a mounted ConfigMap in place, so the file can change
//! while the process runs; [`crate::live`] re-reads it and applies the
//! settings that may change live. Here: the file's format, and how it joins
//! the command line and the environment. One parser serves startup and
//! reloads: a value the process would refuse at startup is refused on reload.
//!
//! Precedence: command line, then the settings file, then the environment,
//! then the defaults.

use std::collections::{BTreeMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{Command, Parser};

/// Where the settings file is and how often it is re-read.
#[derive(Debug, Clone, clap::Args)]
pub struct SettingsFileArgs {
    /// File of `KEY=value` settings (environment variable names), e.g. a mounted ConfigMap. It
    /// is re-read while the process runs: live settings apply at once, the others at the next start.
    #[arg(long, env = "TALLY_SETTINGS_FILE")]
    pub settings_file: Option<PathBuf>,

    /// How often the settings file is checked for changes, in milliseconds.
    #[arg(long, env = "TALLY_SETTINGS_RELOAD_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub settings_reload_ms: u64,
}

/// The file's settings: name → value.
pub type Entries = BTreeMap<String, String>;

/// Why a settings file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("the settings file is not UTF-8")]
    Encoding,
    #[error("line {line}: expected KEY=value")]
    Syntax { line: usize },
    #[error("line {line}: {key} is set twice")]
    Duplicate { line: usize, key: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
    #[error("{0}")]
    Rejected(String),
}

/// The SHA-256 of the file's bytes, hex: how a process names the settings
/// in force, and how the operator recognises the file it wrote.
pub fn digest(contents: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, contents);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The file's lines as settings: blank lines and `#` comments are skipped,
/// every other line is `KEY=value` (the value is the rest of the line, as
/// is: no quoting).
pub fn parse_entries(contents: &[u8]) -> Result<Entries, SettingsError> {
    let text = std::str::from_utf8(contents).map_err(|_| SettingsError::Encoding)?;
    let mut entries = Entries::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else { return Err(SettingsError::Syntax { line: index + 1 }) };
        let valid_key =
            !key.is_empty() && key.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        if !valid_key {
            return Err(SettingsError::Syntax { line: index + 1 });
        }
        if entries.insert(key.to_string(), value.to_string()).is_some() {
            return Err(SettingsError::Duplicate { line: index + 1, key: key.to_string() });
        }
    }
    Ok(entries)
}

/// The arguments set on the command line itself (they win over the file).
fn given_on_command_line(cmd: &Command, cli: &[OsString]) -> HashSet<String> {
    let Ok(matches) = cmd.clone().ignore_errors(true).try_get_matches_from(cli) else { return HashSet::new() };
    cmd.get_arguments()
        .map(|arg| arg.get_id().as_str())
        .filter(|id| matches!(matches.value_source(id), Some(ValueSource::CommandLine)))
        .map(str::to_string)
        .collect()
}

/// `C` as parsed from a settings file, and the names in it that are not
/// settings of this program.
#[derive(Debug)]
pub struct Parsed<C> {
    pub config: C,
    /// Ignored, not refused: a newer operator may write a setting an older
    /// image does not have, and a pod must not crash-loop on it (as with
    /// environment variables). They are logged and shown by the admin port.
    pub ignored: Vec<String>,
}

/// `C` from the command line `cli` (program name first), the settings file's
/// `entries` and the environment. `RUST_LOG` is checked as a log filter here,
/// so a bad one is refused like any other bad value.
pub fn parse<C: Parser>(cli: &[OsString], entries: &Entries) -> Result<Parsed<C>, SettingsError> {
    let cmd = C::command();
    let given = given_on_command_line(&cmd, cli);
    let program = cli.first().cloned().unwrap_or_else(|| OsString::from(cmd.get_name()));
    let mut argv = vec![program];
    let mut ignored = Vec::new();
    for (key, value) in entries {
        let flag = cmd.get_arguments().find(|arg| arg.get_env() == Some(OsStr::new(key)));
        let Some((arg, long)) = flag.and_then(|arg| Some((arg, arg.get_long()?))) else {
            ignored.push(key.clone());
            continue;
        };
        if key == "RUST_LOG" {
            crate::logging::check_filter(value)
                .map_err(|err| SettingsError::Invalid { key: key.clone(), message: err.to_string() })?;
        }
        if !given.contains(arg.get_id().as_str()) {
            argv.push(OsString::from(format!("--{long}={value}")));
        }
    }
    argv.extend(cli.iter().skip(1).cloned());
    let matches = cmd.clone().try_get_matches_from(argv).map_err(|err| refused(&cmd, &err))?;
    let config = <C as clap::FromArgMatches>::from_arg_matches(&matches).map_err(|err| refused(&cmd, &err))?;
    Ok(Parsed { config, ignored })
}

/// A clap error as a settings error naming the variable, not the flag.
fn refused(cmd: &Command, err: &clap::Error) -> SettingsError {
    let rendered = err.render().to_string();
    let first = rendered.lines().next().unwrap_or_default().trim_start_matches("error: ").to_string();
    let named = cmd.get_arguments().find_map(|arg| {
        let long = arg.get_long()?;
        let env = arg.get_env()?.to_str()?;
        first.contains(&format!("--{long} ")).then(|| env.to_string())
    });
    match named {
        Some(key) => SettingsError::Invalid { key, message: first },
        None => SettingsError::Rejected(first),
    }
}

/// The settings file a process started with, kept to re-read it.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    pub reload_every: std::time::Duration,
    /// The command line, re-applied over every version of the file.
    pub cli: Vec<OsString>,
    /// The file as read at startup, and its settings: the values in force
    /// of every setting that only a restart changes.
    pub contents: Vec<u8>,
    pub entries: Entries,
    pub digest: String,
    /// Names in the file that are not settings of this program.
    pub ignored: Vec<String>,
}

/// `C` as the process starts: from the command line and the environment,
/// and from the settings file when `TALLY_SETTINGS_FILE` names one. Exits
/// the way clap does (usage error, `--help`) when they are not valid.
pub fn load<C: Parser>() -> (C, Option<Source>) {
    let cli: Vec<OsString> = std::env::args_os().collect();
    let probe = C::command().ignore_errors(true).try_get_matches_from(&cli).ok();
    let path = probe.as_ref().and_then(|m| m.try_get_one::<PathBuf>("settings_file").ok().flatten().cloned());
    let reload_ms = probe.as_ref().and_then(|m| m.try_get_one::<u64>("settings_reload_ms").ok().flatten().copied());
    let Some(path) = path else { return (C::parse_from(cli), None) };
    let fail = |message: String| -> ! {
        let _ = C::command().error(clap::error::ErrorKind::ValueValidation, message).print();
        std::process::exit(2)
    };
    let contents =
        std::fs::read(&path).unwrap_or_else(|err| fail(format!("TALLY_SETTINGS_FILE {}: {err}", path.display())));
    let entries =
        parse_entries(&contents).unwrap_or_else(|err| fail(format!("TALLY_SETTINGS_FILE {}: {err}", path.display())));
    let Parsed { config, ignored } = match parse::<C>(&cli, &entries) {
        Ok(parsed) => parsed,
        // --help and --version print and exit as usual.
        Err(_) if C::command().try_get_matches_from(&cli).is_err() => {
            Parsed { config: C::parse_from(&cli), ignored: Vec::new() }
        }
        Err(err) => fail(format!("TALLY_SETTINGS_FILE {}: {err}", path.display())),
    };
    let reload_every = std::time::Duration::from_millis(reload_ms.unwrap_or(1000));
    let source = Source { path, reload_every, cli, entries, digest: digest(&contents), contents, ignored };
    (config, Some(source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Parser)]
    struct Demo {
        #[arg(long, env = "DEMO_SIZE", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=10))]
        size: u64,
        #[arg(long, env = "DEMO_NAME", default_value = "a")]
        name: String,
        #[command(flatten)]
        settings: SettingsFileArgs,
    }

    fn cli(args: &[&str]) -> Vec<OsString> {
        std::iter::once("demo").chain(args.iter().copied()).map(OsString::from).collect()
    }

    #[test]
    fn lines_are_key_value_pairs_with_comments_and_blanks() {
        let entries = parse_entries(b"# tunables\n\nDEMO_SIZE=5\n  DEMO_NAME=x=y  \r\n").expect("valid");
        assert_eq!(entries["DEMO_SIZE"], "5");
        assert_eq!(entries["DEMO_NAME"], "x=y", "the value is the rest of the line");
        assert_eq!(parse_entries(b"DEMO_SIZE 5"), Err(SettingsError::Syntax { line: 1 }));
        assert_eq!(parse_entries(b"\nlower=1"), Err(SettingsError::Syntax { line: 2 }));
        assert_eq!(
            parse_entries(b"DEMO_SIZE=1\nDEMO_SIZE=2"),
            Err(SettingsError::Duplicate { line: 2, key: "DEMO_SIZE".into() })
        );
        assert_eq!(parse_entries(&[0xff, b'=']), Err(SettingsError::Encoding));
    }

    #[test]
    fn the_file_sets_values_and_the_command_line_wins_over_it() {
        let entries = parse_entries(b"DEMO_SIZE=7\nDEMO_NAME=file").expect("valid");
        let demo: Demo = parse(&cli(&[]), &entries).expect("valid").config;
        assert_eq!((demo.size, demo.name.as_str()), (7, "file"));
        let demo: Demo = parse(&cli(&["--name", "cli"]), &entries).expect("valid").config;
        assert_eq!((demo.size, demo.name.as_str()), (7, "cli"));
        let demo: Demo = parse(&cli(&[]), &Entries::new()).expect("defaults").config;
        assert_eq!(demo.size, 4);
    }

    #[test]
    fn bad_values_are_refused_naming_the_variable_and_unknown_names_ignored() {
        let out_of_range = parse_entries(b"DEMO_SIZE=11").expect("syntax");
        match parse::<Demo>(&cli(&[]), &out_of_range) {
            Err(SettingsError::Invalid { key, message }) => {
                assert_eq!(key, "DEMO_SIZE");
                assert!(message.contains("11"), "{message}");
            }
            other => panic!("expected an invalid value, got {other:?}"),
        }
        let unknown = parse_entries(b"DEMO_SIZ=3\nDEMO_SIZE=5").expect("syntax");
        let parsed = parse::<Demo>(&cli(&[]), &unknown).expect("an unknown name is not a refusal");
        assert_eq!((parsed.config.size, parsed.ignored), (5, vec!["DEMO_SIZ".to_string()]));
    }

    #[test]
    fn the_digest_is_sha256_hex() {
        assert_eq!(digest(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }
}
