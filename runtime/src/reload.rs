//! A value built from files that are re-read when their contents change:
//! API keys, TLS certificates. Kubernetes updates a mounted Secret in place
//! (an atomic swap of the volume's `..data` link), and cert-manager renews
//! certificates that way, so a long-running process must notice without a
//! restart. Polling the contents (not mtimes, which the link swap does not
//! change on the files themselves) is what works on every volume type.
//!
//! A change that does not parse keeps the value in force: a half-written
//! or broken file never takes a working process down.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;

/// Why the files could not be (re)loaded.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError<E: std::error::Error + 'static> {
    #[error("{setting} {path}: {source}")]
    Unreadable { setting: &'static str, path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Invalid(E),
}

/// One file and the setting that named it (for error messages).
#[derive(Debug, Clone)]
pub struct SettingFile {
    pub setting: &'static str,
    pub path: PathBuf,
}

impl SettingFile {
    pub fn new(setting: &'static str, path: impl AsRef<Path>) -> SettingFile {
        SettingFile { setting, path: path.as_ref().to_path_buf() }
    }
}

type Parse<T, E> = Box<dyn Fn(&[Vec<u8>]) -> Result<T, E> + Send + Sync>;

/// The value built from `files` by `parse`, and what they contained then.
pub struct Reloading<T, E> {
    files: Vec<SettingFile>,
    parse: Parse<T, E>,
    read: Mutex<Vec<Vec<u8>>>,
    current: ArcSwap<T>,
}

impl<T, E: std::error::Error + 'static> Reloading<T, E> {
    /// Reads and parses `files` now: they must exist and be valid.
    pub fn load(
        files: Vec<SettingFile>,
        parse: impl Fn(&[Vec<u8>]) -> Result<T, E> + Send + Sync + 'static,
    ) -> Result<Reloading<T, E>, ReloadError<E>> {
        let contents = read_all(&files)?;
        let value = parse(&contents).map_err(ReloadError::Invalid)?;
        Ok(Reloading {
            files,
            parse: Box::new(parse),
            read: Mutex::new(contents),
            current: ArcSwap::from_pointee(value),
        })
    }

    /// As [`Reloading::load`], from `contents` already read (they must
    /// parse): what a process started with, so that a change made since is
    /// seen by the first [`Reloading::reload`] like any other.
    pub fn load_from(
        files: Vec<SettingFile>,
        contents: Vec<Vec<u8>>,
        parse: impl Fn(&[Vec<u8>]) -> Result<T, E> + Send + Sync + 'static,
    ) -> Result<Reloading<T, E>, ReloadError<E>> {
        let value = parse(&contents).map_err(ReloadError::Invalid)?;
        Ok(Reloading {
            files,
            parse: Box::new(parse),
            read: Mutex::new(contents),
            current: ArcSwap::from_pointee(value),
        })
    }

    /// The value in force.
    pub fn current(&self) -> Arc<T> {
        self.current.load_full()
    }

    /// Borrows the value in force without touching its reference count.
    pub fn with<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        f(&self.current.load())
    }

    /// Reads the files again and rebuilds the value if any changed.
    /// `Ok(false)`: nothing changed. On an error the value in force stays,
    /// and the same broken contents are not reported twice.
    pub fn reload(&self) -> Result<bool, ReloadError<E>> {
        let contents = read_all(&self.files)?;
        let mut read = self.read.lock().unwrap_or_else(PoisonError::into_inner);
        if *read == contents {
            return Ok(false);
        }
        let parsed = (self.parse)(&contents).map_err(ReloadError::Invalid);
        *read = contents;
        self.current.store(Arc::new(parsed?));
        Ok(true)
    }

    /// Calls [`Reloading::reload`] every `interval` until the process ends,
    /// telling `report` about every change and every failure.
    pub async fn watch(&self, interval: Duration, report: impl Fn(Result<(), &ReloadError<E>>)) {
        loop {
            tokio::time::sleep(interval).await;
            match self.reload() {
                Ok(false) => {}
                Ok(true) => report(Ok(())),
                Err(err) => report(Err(&err)),
            }
        }
    }
}

fn read_all<E: std::error::Error + 'static>(files: &[SettingFile]) -> Result<Vec<Vec<u8>>, ReloadError<E>> {
    files
        .iter()
        .map(|file| {
            std::fs::read(&file.path).map_err(|source| ReloadError::Unreadable {
                setting: file.setting,
                path: file.path.clone(),
                source,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("not a number")]
    struct NotANumber;

    fn sum(contents: &[Vec<u8>]) -> Result<u64, NotANumber> {
        contents
            .iter()
            .map(|c| std::str::from_utf8(c).ok().and_then(|s| s.trim().parse::<u64>().ok()).ok_or(NotANumber))
            .sum()
    }

    #[test]
    fn changes_are_picked_up_and_broken_ones_keep_the_value_in_force() {
        let dir = std::env::temp_dir().join(format!("tally-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a"), dir.join("b"));
        std::fs::write(&a, "1").unwrap();
        std::fs::write(&b, "2").unwrap();
        let files = vec![SettingFile::new("A", &a), SettingFile::new("B", &b)];
        let value = Reloading::load(files, sum).unwrap();
        assert_eq!(*value.current(), 3);
        assert!(!value.reload().unwrap(), "unchanged files are not a change");

        std::fs::write(&b, "5").unwrap();
        assert!(value.reload().unwrap());
        assert_eq!(*value.current(), 6);

        std::fs::write(&a, "x").unwrap();
        assert!(matches!(value.reload(), Err(ReloadError::Invalid(NotANumber))));
        assert_eq!(*value.current(), 6, "a broken file keeps the value in force");
        assert!(!value.reload().unwrap(), "the same broken contents are reported once");

        std::fs::remove_file(&a).unwrap();
        match value.reload() {
            Err(ReloadError::Unreadable { setting, .. }) => assert_eq!(setting, "A"),
            other => panic!("expected an unreadable file, got {other:?}"),
        }
        assert_eq!(value.with(|v| *v), 6);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn files_must_be_valid_at_startup() {
        let missing = SettingFile::new("TALLY_X_FILE", "/nonexistent/tally");
        let err = Reloading::load(vec![missing], sum).err().expect("a missing file is an error");
        assert!(err.to_string().starts_with("TALLY_X_FILE /nonexistent/tally:"), "{err}");
    }
}
