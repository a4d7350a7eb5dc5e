//! User identity (the platform's bearer JWT) and admission tokens (issued by the queue, verified by
//! reservation). Both are HS256 JWTs; they use different secrets and different audiences so one can
//! never stand in for the other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, encode};
use serde::{Deserialize, Serialize};

/// Audience of admission tokens; user tokens carrying it are refused as identity and vice versa.
pub const ADMISSION_AUDIENCE: &str = "tiketi-admission";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token is missing")]
    Missing,
    #[error("token is malformed or its signature does not verify")]
    Invalid,
    #[error("token has expired")]
    Expired,
    #[error("admission token was issued for event {actual:?}, not {expected:?}")]
    WrongEvent { expected: String, actual: String },
    #[error("admission token was issued to another user")]
    WrongUser,
    #[error("could not sign token")]
    Sign,
}

impl TokenError {
    /// A fixed label per variant, for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Invalid => "invalid",
            Self::Expired => "expired",
            Self::WrongEvent { .. } => "wrong_event",
            Self::WrongUser => "wrong_user",
            Self::Sign => "sign",
        }
    }
}

/// Shortest HMAC key accepted (bytes): HS256's own output size; RFC 7518 §3.2 requires a key of at
/// least the hash size, and anything shorter can be brute-forced offline from one token.
pub const MIN_KEY_BYTES: usize = 32;

/// Values that are shipped placeholders, never real keys (compared case-insensitively, with `_`
/// read as `-`): a key containing one of them is refused.
const PLACEHOLDERS: [&str; 4] = ["change-me", "changeme", "replace-me", "placeholder"];

/// Checks a signing key before a service trusts it: not empty, at least [`MIN_KEY_BYTES`], not a
/// known placeholder. `what` names the key in the error (e.g. `TIKETI_JWT_SECRET`).
pub fn check_signing_key(what: &str, key: &[u8]) -> Result<(), String> {
    if key.is_empty() {
        return Err(format!("{what} is empty: anyone could mint tokens"));
    }
    let lowered = String::from_utf8_lossy(key)
        .to_ascii_lowercase()
        .replace('_', "-");
    if let Some(p) = PLACEHOLDERS.iter().find(|p| lowered.contains(*p)) {
        return Err(format!(
            "{what} is a placeholder (it contains {p:?}); set a random key (e.g. `openssl rand -base64 32`)"
        ));
    }
    if key.len() < MIN_KEY_BYTES {
        return Err(format!(
            "{what} is {} bytes; at least {MIN_KEY_BYTES} are required (e.g. `openssl rand -base64 32`)",
            key.len()
        ));
    }
    Ok(())
}

/// Claims of the platform's user token. Only `sub` is required by tiketi.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserClaims {
    pub sub: String,
    pub exp: i64,
}

/// Claims of an admission token: this user may buy for this event until `exp` (unix seconds).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AdmissionClaims {
    /// The user (same as the user token's `sub`).
    pub sub: String,
    /// The event id.
    pub event: String,
    pub aud: String,
    pub iat: i64,
    /// Expiry, unix seconds.
    pub exp: i64,
    /// Expiry in unix milliseconds, the same instant as the `active` set's score.
    pub exp_ms: i64,
}

/// Tokens that verified, by their exact text, with what they said. A buyer's browser sends the
/// same two tokens with every hold it tries in a rush (most of them refused: the seat was just
/// taken), and checking a signature (base64, HMAC-SHA256, JSON) costs far more than a lookup.
/// Only tokens whose signature verified enter, keyed by the whole token (so a changed byte is a
/// miss); every use re-checks what depends on time or on the request (expiry; for admission the
/// event and user), so a hit answers exactly as a fresh check would. Bounded: when full it
/// starts over.
#[derive(Clone)]
struct Verified<T>(Arc<Mutex<HashMap<Box<str>, T>>>);

/// At most this many tokens per cache (a few hundred bytes each).
const VERIFIED_CAP: usize = 16_384;

impl<T: Clone> Verified<T> {
    fn new() -> Self {
        Self(Arc::new(Mutex::new(HashMap::new())))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, T>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self, token: &str) -> Option<T> {
        self.lock().get(token).cloned()
    }

    fn put(&self, token: &str, value: T) {
        let mut map = self.lock();
        if map.len() >= VERIFIED_CAP {
            map.clear();
        }
        map.insert(token.into(), value);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// Leeway on a user token's expiry (seconds), as the platform's clocks may differ from ours.
const USER_LEEWAY_SECONDS: u64 = 5;

/// Verifies user tokens with the platform's shared secret.
#[derive(Clone)]
pub struct UserVerifier {
    key: DecodingKey,
    validation: Validation,
    /// Verified tokens: (user, expiry in unix seconds).
    verified: Verified<(String, i64)>,
}

impl UserVerifier {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = USER_LEEWAY_SECONDS;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            key: DecodingKey::from_secret(secret),
            validation,
            verified: Verified::new(),
        }
    }

    /// Verifies an `Authorization` header value (`Bearer <jwt>`) and returns the user id.
    pub fn verify_bearer(&self, header: Option<&str>) -> Result<String, TokenError> {
        let raw = header.ok_or(TokenError::Missing)?;
        let token = raw
            .strip_prefix("Bearer ")
            .or_else(|| raw.strip_prefix("bearer "))
            .ok_or(TokenError::Invalid)?
            .trim();
        self.verify(token)
    }

    pub fn verify(&self, token: &str) -> Result<String, TokenError> {
        if let Some((sub, exp)) = self.verified.get(token) {
            // The expiry rule of `Validation` (exp no earlier than now minus the leeway).
            let now = jsonwebtoken::get_current_timestamp();
            return if exp >= 0 && (exp as u64).saturating_add(USER_LEEWAY_SECONDS) >= now {
                Ok(sub)
            } else {
                Err(TokenError::Expired)
            };
        }
        let data = decode::<serde_json::Value>(token, &self.key, &self.validation).map_err(map_jwt_error)?;
        if data.claims.get("aud").and_then(|a| a.as_str()) == Some(ADMISSION_AUDIENCE) {
            return Err(TokenError::Invalid);
        }
        match data.claims.get("sub").and_then(|s| s.as_str()) {
            Some(sub) if !sub.is_empty() && sub.len() <= 256 => {
                if let Some(exp) = data.claims.get("exp").and_then(|e| e.as_i64()) {
                    self.verified.put(token, (sub.to_owned(), exp));
                }
                Ok(sub.to_owned())
            }
            _ => Err(TokenError::Invalid),
        }
    }
}

/// Signs a user token; used by tests, the load generator and the demo, which play the platform.
pub fn sign_user_token(secret: &[u8], user: &str, exp_unix: i64) -> Result<String, TokenError> {
    let claims = UserClaims {
        sub: user.to_owned(),
        exp: exp_unix,
    };
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|_| TokenError::Sign)
}

/// Issues and verifies admission tokens with the admission secret.
#[derive(Clone)]
pub struct AdmissionKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    verified: Verified<AdmissionClaims>,
}

impl AdmissionKeys {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_exp = false;
        validation.set_audience(&[ADMISSION_AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "sub", "aud"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            verified: Verified::new(),
        }
    }

    /// Issues a token for `user` at `event` expiring at `exp_ms` (unix milliseconds).
    pub fn issue(&self, event: &str, user: &str, now_ms: i64, exp_ms: i64) -> Result<String, TokenError> {
        let claims = AdmissionClaims {
            sub: user.to_owned(),
            event: event.to_owned(),
            aud: ADMISSION_AUDIENCE.to_owned(),
            iat: now_ms / 1000,
            exp: exp_ms.div_euclid(1000),
            exp_ms,
        };
        encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).map_err(|_| TokenError::Sign)
    }

    /// Verifies a token for this event and user at `now_ms`. Expiry is checked against `exp_ms`
    /// with no leeway: an admission slot that has lapsed is someone else's.
    pub fn verify(
        &self,
        token: Option<&str>,
        event: &str,
        user: &str,
        now_ms: i64,
    ) -> Result<AdmissionClaims, TokenError> {
        let token = token.ok_or(TokenError::Missing)?.trim();
        let claims = match self.verified.get(token) {
            Some(claims) => claims,
            None => {
                let data = decode::<AdmissionClaims>(token, &self.decoding, &self.validation)
                    .map_err(map_jwt_error)?;
                self.verified.put(token, data.claims.clone());
                data.claims
            }
        };
        if claims.exp_ms <= now_ms {
            return Err(TokenError::Expired);
        }
        if claims.event != event {
            return Err(TokenError::WrongEvent {
                expected: event.to_owned(),
                actual: claims.event,
            });
        }
        if claims.sub != user {
            return Err(TokenError::WrongUser);
        }
        Ok(claims)
    }
}

fn map_jwt_error(e: jsonwebtoken::errors::Error) -> TokenError {
    match e.kind() {
        jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
        _ => TokenError::Invalid,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn signing_keys_must_be_long_and_not_placeholders() {
        assert!(check_signing_key("K", b"").unwrap_err().contains("empty"));
        assert!(check_signing_key("K", b"short").unwrap_err().contains("5 bytes"));
        let e = check_signing_key("K", b"CHANGE_ME_CHANGE_ME_CHANGE_ME_CHANGE_ME").unwrap_err();
        assert!(e.contains("placeholder"), "{e}");
        assert!(check_signing_key("K", b"change-me-admission-key-at-least-32-bytes").is_err());
        // A short placeholder is named as a placeholder (the more useful message).
        let e = check_signing_key("K", b"CHANGE_ME_USER_JWT_HS256_KEY").unwrap_err();
        assert!(e.contains("placeholder"), "{e}");
        check_signing_key("K", b"0123456789abcdef0123456789abcdef").unwrap();
    }

    #[test]
    fn admission_token_round_trips_and_refuses_misuse() {
        let keys = AdmissionKeys::new(b"admission-secret");
        let t = keys.issue("ev", "alice", NOW, NOW + 60_000).unwrap();
        let c = keys.verify(Some(&t), "ev", "alice", NOW + 1).unwrap();
        assert_eq!(
            (c.sub.as_str(), c.event.as_str(), c.exp_ms),
            ("alice", "ev", NOW + 60_000)
        );
        // Remembered from here on: the checks below answer from the cache, as a fresh check would.
        assert_eq!(keys.verified.len(), 1, "a verified token is remembered");
        assert_eq!(
            keys.verify(Some(&t), "ev", "bob", NOW),
            Err(TokenError::WrongUser)
        );
        assert!(matches!(
            keys.verify(Some(&t), "other", "alice", NOW),
            Err(TokenError::WrongEvent { .. })
        ));
        assert_eq!(
            keys.verify(Some(&t), "ev", "alice", NOW + 60_000),
            Err(TokenError::Expired)
        );
        assert_eq!(keys.verify(None, "ev", "alice", NOW), Err(TokenError::Missing));
        let forged = AdmissionKeys::new(b"other-secret")
            .issue("ev", "alice", NOW, NOW + 60_000)
            .unwrap();
        assert_eq!(
            keys.verify(Some(&forged), "ev", "alice", NOW),
            Err(TokenError::Invalid)
        );
        let mut tampered = t.clone();
        tampered.insert(tampered.len() - 3, 'x');
        assert_eq!(
            keys.verify(Some(&tampered), "ev", "alice", NOW),
            Err(TokenError::Invalid)
        );
        // A changed byte is another token: checked in full, refused, not remembered.
        assert_eq!(keys.verified.len(), 1, "only the verified token is remembered");
    }

    #[test]
    fn remembered_user_tokens_still_expire_and_forged_ones_are_never_remembered() {
        let secret = b"user-secret";
        let v = UserVerifier::new(secret);
        let now = chrono::Utc::now().timestamp();
        // Expires within the leeway: verified (and remembered) now...
        let soon = sign_user_token(secret, "alice", now - 3).unwrap();
        assert_eq!(v.verify(&soon), Ok("alice".to_owned()));
        assert_eq!(v.verified.len(), 1);
        assert_eq!(v.verify(&soon), Ok("alice".to_owned()));
        // ...and refused, remembered or not, once past it.
        std::thread::sleep(std::time::Duration::from_millis(3_100));
        assert_eq!(v.verify(&soon), Err(TokenError::Expired));
        assert_eq!(UserVerifier::new(secret).verify(&soon), Err(TokenError::Expired));
        // A token that does not verify is never remembered.
        let forged = sign_user_token(b"other-secret", "alice", now + 3600).unwrap();
        assert_eq!(v.verify(&forged), Err(TokenError::Invalid));
        assert_eq!(v.verified.len(), 1);
    }

    #[test]
    fn user_tokens_verify_and_admission_tokens_are_not_identities() {
        let secret = b"user-secret";
        let v = UserVerifier::new(secret);
        let far = chrono::Utc::now().timestamp() + 3600;
        let t = sign_user_token(secret, "alice", far).unwrap();
        assert_eq!(
            v.verify_bearer(Some(&format!("Bearer {t}"))),
            Ok("alice".to_owned())
        );
        assert_eq!(v.verify_bearer(None), Err(TokenError::Missing));
        assert_eq!(v.verify_bearer(Some(&t)), Err(TokenError::Invalid));
        let old = sign_user_token(secret, "alice", far - 7200 - 60).unwrap();
        assert_eq!(v.verify(&old), Err(TokenError::Expired));
        let adm = AdmissionKeys::new(secret)
            .issue("ev", "alice", NOW, far * 1000)
            .unwrap();
        assert_eq!(v.verify(&adm), Err(TokenError::Invalid));
    }
}
