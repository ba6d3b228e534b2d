//! Secret strings: passwords, API keys and mnemonic phrases.
//!
//! A [`Secret`] prints as `[redacted]` through both `Debug` and `Display`, so a secret that
//! ends up inside a logged struct or error never reaches the log. The bytes are zeroed on drop.

use std::fmt;

use zeroize::Zeroizing;

/// A string that must never be logged or displayed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// Wraps `value`, taking ownership so no plain copy is left behind by the caller.
    pub fn new(value: String) -> Secret {
        Secret(Zeroizing::new(value))
    }

    /// Returns the secret text, for the one place that needs it (a connection, a hash).
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_debug_and_display_are_redacted() {
        let secret = Secret::new("hunter2".to_owned());

        assert_eq!(format!("{secret:?}"), "Secret([redacted])");
        assert_eq!(format!("{secret}"), "[redacted]");
        assert_eq!(secret.expose(), "hunter2");
    }
}
