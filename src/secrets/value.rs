//! A secret's value, static (read from `[secrets]`) or minted (an access token, a rotated refresh token, a
//! root credential copied out of `[secrets]`): memory locked (never swapped, where the kernel allows) and
//! zeroed on drop, a Debug that says `<redacted>`, no Display, so that it cannot be logged by accident.

use std::fmt;

pub struct SecretValue(String);

impl SecretValue {
    pub fn new(value: String) -> Self {
        // SAFETY: the range is the string's own allocation, alive as long as the value.
        unsafe { libc::mlock(value.as_ptr().cast(), value.capacity()) };
        SecretValue(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Drop for SecretValue {
    /// Zeroed, but not unlocked: locks are per page, not per range, and the page may hold another
    /// secret that must stay locked.
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Definitions compare their root credentials on reload: a changed key or client secret is a changed
/// definition, whose token is fetched anew.
impl PartialEq for SecretValue {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for SecretValue {}
