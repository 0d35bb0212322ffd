//! Credentials: development mode when neither secret is configured, and the verifier and key
//! checker the server runs with.

use std::fmt;
use std::time::SystemTime;

use super::settings::ServerConfig;
use super::{ConfigError, Origin};
use crate::server::auth::{self, ApiKey, JwtVerifier};
use crate::UserId;

/// The credential settings, by name (a test checks that both are settings).
pub(super) const JWT_SECRET: &str = "jwt_secret";
pub(super) const API_KEY: &str = "api_key";

/// A generated or configured secret that cannot be used; never echoed.
fn refused(origin: Origin, reason: String) -> ConfigError {
    ConfigError::Invalid {
        setting: JWT_SECRET,
        origin,
        value: "<redacted>".into(),
        reason,
    }
}

impl ServerConfig {
    /// Settles the credentials before the server starts.
    ///
    /// - both `jwt_secret` and `api_key` set: nothing to do, `Ok(None)`;
    /// - neither set: development mode. Generates both from the OS's CSPRNG, stores them in
    ///   `self`, and returns them with a token for user `demo` for `main` to print. It also
    ///   turns the dashboard on, unless `dashboard` was set either way;
    /// - exactly one set: [`ConfigError::MissingCredential`] naming the other. A generated
    ///   credential would be unknown to whoever configured the first one, so a half-done
    ///   production setup fails loudly rather than starting half-open.
    ///
    /// ```
    /// use tether::server::config::ServerConfig;
    ///
    /// let mut config = ServerConfig::default();
    /// let dev = config.ensure_credentials()?.expect("no credentials configured");
    /// assert_eq!(config.jwt_secret.as_deref(), Some(dev.jwt_secret.as_str()));
    /// assert!(config.jwt_verifier()?.verify(&dev.demo_token, std::time::SystemTime::now()).is_ok());
    /// # Ok::<(), tether::server::config::ConfigError>(())
    /// ```
    pub fn ensure_credentials(&mut self) -> Result<Option<DevCredentials>, ConfigError> {
        match (&self.jwt_secret, &self.api_key) {
            (Some(_), Some(_)) => Ok(None),
            (Some(_), None) => Err(ConfigError::MissingCredential {
                missing: API_KEY,
                present: JWT_SECRET,
            }),
            (None, Some(_)) => Err(ConfigError::MissingCredential {
                missing: JWT_SECRET,
                present: API_KEY,
            }),
            (None, None) => {
                let jwt_secret = auth::generate_secret().map_err(ConfigError::Random)?;
                let api_key = auth::generate_secret().map_err(ConfigError::Random)?;
                let demo_user = UserId::new(DEMO_USER)
                    .map_err(|e| refused(Origin::Default, format!("demo user: {e}")))?;
                // No expiry: the secret dies with the process, and so does the token.
                let demo_token =
                    auth::issue_token(&jwt_secret, &demo_user, None, SystemTime::now())
                        .map_err(|e| refused(Origin::Default, e.to_string()))?;
                self.jwt_secret = Some(jwt_secret.clone());
                self.api_key = Some(api_key.clone());
                self.dashboard.get_or_insert(true);
                Ok(Some(DevCredentials {
                    jwt_secret,
                    api_key,
                    demo_user,
                    demo_token,
                }))
            }
        }
    }

    /// Whether the dashboard is served: `dashboard` if set, otherwise off (development mode
    /// sets it, see [`ensure_credentials`](Self::ensure_credentials)).
    ///
    /// ```
    /// use tether::server::config::ServerConfig;
    ///
    /// let mut config = ServerConfig::default();
    /// assert!(!config.dashboard_enabled());
    /// config.ensure_credentials()?; // development mode
    /// assert!(config.dashboard_enabled());
    ///
    /// let mut off = ServerConfig::parse_from(["serve", "--dashboard=false"], [("", ""); 0])?;
    /// off.ensure_credentials()?;
    /// assert!(!off.dashboard_enabled(), "an explicit setting wins");
    /// # Ok::<(), tether::server::config::ConfigError>(())
    /// ```
    pub fn dashboard_enabled(&self) -> bool {
        self.dashboard.unwrap_or(false)
    }

    /// The token verifier for the configured `jwt_secret`.
    pub fn jwt_verifier(&self) -> Result<JwtVerifier, ConfigError> {
        let secret = self
            .jwt_secret
            .as_deref()
            .ok_or(ConfigError::MissingCredential {
                missing: JWT_SECRET,
                present: "no credential (call ensure_credentials first)",
            })?;
        JwtVerifier::new(secret).map_err(|e| refused(Origin::Code, e.to_string()))
    }

    /// The publish API's key checker for the configured `api_key`.
    pub fn api_key_checker(&self) -> Result<ApiKey, ConfigError> {
        let key = self
            .api_key
            .as_deref()
            .ok_or(ConfigError::MissingCredential {
                missing: API_KEY,
                present: "no credential (call ensure_credentials first)",
            })?;
        Ok(ApiKey::new(key))
    }
}

/// The user development mode issues a token for.
pub const DEMO_USER: &str = "demo";

/// Credentials generated in development mode, for `main` to show the operator.
#[derive(Clone)]
#[non_exhaustive]
pub struct DevCredentials {
    /// The generated JWT secret.
    pub jwt_secret: String,
    /// The generated API key.
    pub api_key: String,
    /// The user the demo token is for ([`DEMO_USER`]).
    pub demo_user: UserId,
    /// A token for `demo_user`, without expiry.
    pub demo_token: String,
}

impl fmt::Debug for DevCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevCredentials")
            .field("demo_user", &self.demo_user)
            .finish_non_exhaustive()
    }
}

impl DevCredentials {
    /// The plain lines `main` prints on stdout, for a person to copy.
    pub fn banner(&self) -> String {
        format!(
            "\n\
             DEVELOPMENT MODE: neither jwt_secret nor api_key is configured, so throwaway ones\n\
             were generated. They are valid until this process exits. Do not run production\n\
             like this: set TETHER_JWT_SECRET and TETHER_API_KEY (or the config file).\n\
             \n\
             \x20 TETHER_JWT_SECRET={}\n\
             \x20 TETHER_API_KEY={}\n\
             \x20 token for user {:?} (no expiry):\n\
             \x20 {}\n\
             \n\
             \x20 Publish API: Authorization: Bearer <TETHER_API_KEY>\n\
             \x20 New tokens:  tether token --user <id> (with TETHER_JWT_SECRET set as above)\n",
            self.jwt_secret,
            self.api_key,
            self.demo_user.as_str(),
            self.demo_token,
        )
    }
}
