//! A settings file as the operator's mounted ConfigMap is to a pod: a file
//! of `KEY=value` lines that is replaced whole. The kubelet swaps a
//! ConfigMap volume's contents atomically (a symlink swap); here a write to
//! a temporary file and a rename do the same, so a process re-reading it
//! never sees half a version.

use std::path::{Path, PathBuf};

pub struct SettingsFile {
    dir: PathBuf,
    path: PathBuf,
}

impl SettingsFile {
    /// A new file holding `entries`, in its own temporary directory.
    pub fn new(entries: &[(&str, &str)]) -> SettingsFile {
        let dir = std::env::temp_dir().join(crate::unique("tally-settings"));
        std::fs::create_dir_all(&dir).expect("settings dir");
        let file = SettingsFile { path: dir.join("settings.env"), dir };
        file.write(entries);
        file
    }

    /// Replaces the whole file with `entries`, atomically.
    pub fn write(&self, entries: &[(&str, &str)]) {
        let text: String = entries.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        self.write_raw(&text);
    }

    /// Replaces the whole file with `text`, atomically.
    pub fn write_raw(&self, text: &str) {
        let staged = self.dir.join(".settings.env.new");
        std::fs::write(&staged, text).expect("write settings");
        std::fs::rename(&staged, &self.path).expect("swap settings");
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path as a string, for `TALLY_SETTINGS_FILE`.
    pub fn env_value(&self) -> String {
        self.path.display().to_string()
    }
}

impl Drop for SettingsFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
