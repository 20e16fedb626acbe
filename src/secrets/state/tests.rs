use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicU32, Ordering};

use super::*;

/// A directory of its own under the system's temp dir, removed when the test ends.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sandbox-state-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn value(text: &str) -> SecretValue {
    SecretValue::new(text.into())
}

#[test]
fn a_saved_token_is_read_back_and_the_file_is_private() {
    let dir = TempDir::new();
    // The directory does not exist yet: save makes it, 0700.
    let state = StateFile::new(dir.0.join("sub").join("crm")).unwrap();
    let configured = value("rt-configured");
    assert!(state.load(&configured).unwrap().is_none());
    state.save(&configured, &value("rt-2")).unwrap();
    assert_eq!(state.load(&configured).unwrap().unwrap().expose(), "rt-2");
    state.save(&configured, &value("rt-3")).unwrap();
    assert_eq!(state.load(&configured).unwrap().unwrap().expose(), "rt-3");
    let file = fs::metadata(state.path()).unwrap();
    assert_eq!(file.mode() & 0o777, 0o600);
    let parent = fs::metadata(dir.0.join("sub")).unwrap();
    assert_eq!(parent.mode() & 0o777, 0o700);
    // Nothing but the state file is left in the directory.
    let names: Vec<_> = fs::read_dir(dir.0.join("sub"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["crm"]);
    let text = fs::read_to_string(state.path()).unwrap();
    assert!(!text.contains("rt-configured"), "{text}");
}

#[test]
fn a_new_configured_refresh_token_wins_over_the_saved_chain() {
    let dir = TempDir::new();
    let state = StateFile::new(dir.0.join("crm")).unwrap();
    state.save(&value("rt-old-grant"), &value("rt-5")).unwrap();
    assert!(state.load(&value("rt-new-grant")).unwrap().is_none());
    assert!(state.load(&value("rt-old-grant")).unwrap().is_some());
}

#[test]
fn a_leftover_temporary_file_is_replaced_not_reused() {
    let dir = TempDir::new();
    fs::create_dir_all(&dir.0).unwrap();
    let temp = dir.0.join(".crm.tmp");
    fs::write(&temp, "junk").unwrap();
    fs::set_permissions(&temp, fs::Permissions::from_mode(0o666)).unwrap();
    let state = StateFile::new(dir.0.join("crm")).unwrap();
    state.save(&value("c"), &value("rt-1")).unwrap();
    assert!(!temp.exists());
    assert_eq!(fs::metadata(state.path()).unwrap().mode() & 0o777, 0o600);
}

#[test]
fn unreadable_or_foreign_files_are_errors_with_the_path() {
    let dir = TempDir::new();
    fs::create_dir_all(&dir.0).unwrap();
    let path = dir.0.join("crm");
    let state = StateFile::new(path.clone()).unwrap();
    let configured = value("c");
    fs::write(&path, "rt-plain-text").unwrap();
    let error = state.load(&configured).unwrap_err();
    assert!(matches!(error, StateError::Format { .. }));
    let message = error.to_string();
    assert!(
        message.starts_with(&path.display().to_string()),
        "{message}"
    );
    assert!(!message.contains("rt-plain-text"), "{message}");
    fs::write(&path, r#"{"configured_sha256":"x","refresh_token":"a\nb"}"#).unwrap();
    assert!(matches!(
        state.load(&configured),
        Err(StateError::Format { .. })
    ));
    fs::write(&path, vec![b' '; MAX_STATE as usize + 1]).unwrap();
    assert!(matches!(
        state.load(&configured),
        Err(StateError::Format {
            why: "too large",
            ..
        })
    ));
    fs::remove_file(&path).unwrap();
    fs::create_dir(&path).unwrap();
    assert!(state.load(&configured).is_err());
    // A symlink is not followed.
    fs::remove_dir(&path).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", &path).unwrap();
    assert!(matches!(
        state.load(&configured),
        Err(StateError::Io { .. })
    ));
}

#[test]
fn saving_where_it_cannot_be_written_is_an_error_with_the_path() {
    let dir = TempDir::new();
    fs::create_dir_all(&dir.0).unwrap();
    // A file where the directory should be.
    let blocker = dir.0.join("not-a-dir");
    fs::write(&blocker, "").unwrap();
    let state = StateFile::new(blocker.join("crm")).unwrap();
    let error = state.save(&value("c"), &value("rt")).unwrap_err();
    assert!(
        error.to_string().contains(&blocker.display().to_string()),
        "{error}"
    );
}

#[test]
fn only_plain_names_make_a_state_file() {
    assert!(StateFile::new(PathBuf::from("/var/lib/sandbox/crm")).is_ok());
    for bad in ["/var/lib/sandbox/.crm", "/", "crm/..", ""] {
        assert!(StateFile::new(PathBuf::from(bad)).is_err(), "{bad}");
    }
}
