//! The refresh token an OAuth2 server rotated to, kept in `state_dir/<secret>` so that a restarted
//! daemon spends the live one: the server invalidated the configured one when it issued the next.
//!
//! Written durably before the access token that came with it is used: to a temporary file in the same
//! directory (0600 from its creation), fsynced, renamed over the old file, and the directory fsynced. The
//! file also holds the SHA-256 of the configured refresh token it descends from: an operator who
//! configures a new refresh token (after revoking the old grant) gets that one used, not the stale state.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::secrets::exchange::check_token;
use crate::secrets::value::SecretValue;

/// A state file is a few hundred bytes; anything much larger is not one.
const MAX_STATE: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: not a refresh token state file ({why}); remove it to start again from the configured refresh token", path.display())]
    Format { path: PathBuf, why: &'static str },
    #[error("{}: the file name is not a plain secret name", path.display())]
    Name { path: PathBuf },
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Stored<'a> {
    /// SHA-256 (hex) of the configured refresh token this one descends from.
    configured_sha256: String,
    #[serde(borrow)]
    refresh_token: std::borrow::Cow<'a, str>,
}

/// `state_dir/<secret>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    /// The state file at `path`, whose file name must be a plain name (a secret's).
    pub fn new(path: PathBuf) -> Result<StateFile, StateError> {
        let plain = path
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| !name.starts_with('.') && !name.contains(['/', '\0']));
        if !plain || path.parent().is_none() {
            return Err(StateError::Name { path });
        }
        Ok(StateFile { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The rotated refresh token, if one was saved and it descends from `configured`.
    pub fn load(&self, configured: &SecretValue) -> Result<Option<SecretValue>, StateError> {
        let io = |source| StateError::Io {
            path: self.path.clone(),
            source,
        };
        let format = |why| StateError::Format {
            path: self.path.clone(),
            why,
        };
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&self.path)
        {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(io(error)),
        };
        let metadata = file.metadata().map_err(io)?;
        if !metadata.is_file() {
            return Err(format("not a regular file"));
        }
        if metadata.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %self.path.display(), "the refresh token state file is readable by others; chmod 600 it");
        }
        let mut bytes = Zeroizing::new(Vec::with_capacity(metadata.len().min(MAX_STATE) as usize));
        file.take(MAX_STATE + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        if bytes.len() as u64 > MAX_STATE {
            return Err(format("too large"));
        }
        let stored: Stored = serde_json::from_slice(&bytes).map_err(|_| format("not its JSON"))?;
        let token = SecretValue::new(stored.refresh_token.into_owned());
        if check_token(token.expose()).is_err() {
            return Err(format(
                "the refresh token is empty or has control characters",
            ));
        }
        if stored.configured_sha256 != sha256_hex(configured) {
            tracing::info!(path = %self.path.display(), "the configured refresh token changed since this state was saved; using the configured one");
            return Ok(None);
        }
        Ok(Some(token))
    }

    /// Saves `token`, rotated from the chain that began with `configured`, durably and atomically.
    pub fn save(&self, configured: &SecretValue, token: &SecretValue) -> Result<(), StateError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| StateError::Io { path, source }
        };
        let dir = self.path.parent().ok_or_else(|| StateError::Name {
            path: self.path.clone(),
        })?;
        // systemd's StateDirectory= makes it; a daemon started by hand makes it itself, private.
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
        let stored = Stored {
            configured_sha256: sha256_hex(configured),
            refresh_token: token.expose().into(),
        };
        // Sized ahead (JSON escapes at most 6 bytes per byte): a Vec that grew would leave copies.
        let mut json = Zeroizing::new(Vec::with_capacity(128 + 6 * token.expose().len()));
        serde_json::to_writer(&mut *json, &stored).map_err(|error| StateError::Io {
            path: self.path.clone(),
            source: io::Error::other(error),
        })?;
        let name = self
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("state");
        let temp = dir.join(format!(".{name}.tmp"));
        // A temporary file a crash left behind is removed, not reused: its mode could be anything.
        match fs::remove_file(&temp) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(io(&temp)(error)),
            _ => {}
        }
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&temp)
            .and_then(|mut file| {
                file.write_all(&json)?;
                file.sync_all()
            });
        if let Err(error) = written {
            let _ = fs::remove_file(&temp);
            return Err(io(&temp)(error));
        }
        if let Err(error) = fs::rename(&temp, &self.path) {
            let _ = fs::remove_file(&temp);
            return Err(io(&self.path)(error));
        }
        File::open(dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io(dir))
    }
}

fn sha256_hex(value: &SecretValue) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, value.expose().as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
