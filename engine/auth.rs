//! Who is calling: API keys and JWTs turned into a [`Principal`] (owner id and role).
//!
//! Knows no HTTP: the API layer hands in the `X-API-Key` value and the bearer token.
//!
//! - API keys are never kept in the clear: each is held as its SHA-256 digest, a presented
//!   key is hashed and compared with every configured digest in constant time (no early
//!   exit), so timing tells nothing about which bytes matched. A key's owner id is
//!   `key:` + the first 16 hex digits of its digest: stable, and safe to log.
//! - JWTs: HS256 with `JWT_SECRET`, RS256 or EdDSA with the public key in
//!   `JWT_PUBLIC_KEY`. Only the algorithms of the configured keys are accepted, and each
//!   algorithm is verified only with the key of its own family, so a token signed with
//!   HMAC over the public key (algorithm confusion) or with `alg: none` never verifies.
//!   `exp` and `sub` are required, `nbf` is honored, with [`JWT_LEEWAY_S`] of clock skew.
//!   With `JWT_AUDIENCE` / `JWT_ISSUER` set, `aud` / `iss` are required and must match.
//! - Owner ids are namespaced by source (`domain::owner`): `key:<16 hex>` for a key,
//!   `jwt:<sub>` for a token, so no token subject (not even `sub: "key:…"`) is a key's
//!   owner.

use aws_lc_rs::{constant_time, digest};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::domain::{Role, owner};

/// Clock skew allowed on `exp` and `nbf`, in seconds.
pub const JWT_LEEWAY_S: u64 = 30;

/// Shortest `JWT_SECRET` accepted, in bytes (RFC 7518 §3.2: at least the hash size).
pub const JWT_SECRET_BYTES_MIN: usize = 32;

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The owner id: `key:<16 hex>` for an API key, `jwt:<sub>` for a token.
    pub owner: String,
    /// What it may do.
    pub role: Role,
}

/// Why a caller was not authenticated (the message is safe to send: it never echoes
/// credentials).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(pub &'static str);

/// One configured API key: its digest and role.
struct ApiKey {
    digest: [u8; 32],
    role: Role,
}

/// The public key of `JWT_PUBLIC_KEY`, with the one algorithm it verifies.
struct PublicKey {
    key: DecodingKey,
    alg: Algorithm,
}

/// The configured credentials. Empty means open mode: nobody is authenticated and
/// everything is allowed.
#[derive(Default)]
pub struct Auth {
    keys: Vec<ApiKey>,
    hmac: Option<DecodingKey>,
    public: Option<PublicKey>,
    /// `JWT_AUDIENCE`: the `aud` a token must name.
    audience: Option<String>,
    /// `JWT_ISSUER`: the `iss` a token must carry.
    issuer: Option<String>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets: only what is configured.
        f.debug_struct("Auth")
            .field("api_keys", &self.keys.len())
            .field("jwt_hs256", &self.hmac.is_some())
            .field("jwt_public", &self.public.as_ref().map(|p| p.alg))
            .field("jwt_audience", &self.audience)
            .field("jwt_issuer", &self.issuer)
            .finish()
    }
}

/// The SHA-256 digest of a key.
fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Whether two key digests are equal, in time that does not depend on where they differ.
fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    constant_time::verify_slices_are_equal(a, b).is_ok()
}

/// The owner id of an API key: `key:` + the first 16 hex digits of its SHA-256.
pub fn key_owner(key: &str) -> String {
    owner_of(&sha256(key.as_bytes()))
}

fn owner_of(digest: &[u8; 32]) -> String {
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("key:{hex}")
}

/// The claims the gateway reads.
#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    role: Option<String>,
}

impl Auth {
    /// Parse `key:role` entries (from `API_KEYS`, comma-separated, or from a key file, one
    /// per line with `#` comments). The error names the entry by position, never its key.
    pub fn parse_keys(text: &str, separator: char) -> Result<Vec<(String, Role)>, String> {
        let mut out = Vec::new();
        for (i, raw) in text.split(separator).enumerate() {
            let entry = raw.split('#').next().unwrap_or("").trim();
            if entry.is_empty() {
                continue;
            }
            let Some((key, role)) = entry.rsplit_once(':') else {
                return Err(format!("entry {} is not key:role", i + 1));
            };
            let (key, role) = (key.trim(), role.trim());
            let role =
                Role::parse(role).ok_or_else(|| format!("entry {}: role {role:?} is not admin or user", i + 1))?;
            if key.len() < 8 || !key.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!("entry {}: a key must be at least 8 printable characters without spaces", i + 1));
            }
            out.push((key.to_string(), role));
        }
        Ok(out)
    }

    /// Add API keys; a key given twice is an error (naming its owner id, not the key).
    pub fn add_keys(&mut self, keys: Vec<(String, Role)>) -> Result<(), String> {
        for (key, role) in keys {
            let digest = sha256(key.as_bytes());
            if self.keys.iter().any(|k| same_digest(&k.digest, &digest)) {
                return Err(format!("the key of {} is listed twice", owner_of(&digest)));
            }
            self.keys.push(ApiKey { digest, role });
        }
        Ok(())
    }

    /// Accept HS256 tokens signed with `secret`.
    pub fn set_jwt_secret(&mut self, secret: &[u8]) -> Result<(), String> {
        if secret.len() < JWT_SECRET_BYTES_MIN {
            return Err(format!("must be at least {JWT_SECRET_BYTES_MIN} bytes"));
        }
        self.hmac = Some(DecodingKey::from_secret(secret));
        Ok(())
    }

    /// Accept RS256 (an RSA public key) or EdDSA (an Ed25519 public key) tokens verified
    /// with this PEM.
    pub fn set_jwt_public_key(&mut self, pem: &[u8]) -> Result<(), String> {
        let text = std::str::from_utf8(pem).map_err(|_| "is not a PEM file".to_string())?;
        let public = if let Ok(key) = DecodingKey::from_ed_pem(pem) {
            PublicKey { key, alg: Algorithm::EdDSA }
        } else if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            PublicKey { key, alg: Algorithm::RS256 }
        } else if text.contains("PRIVATE KEY") {
            return Err("holds a private key; give the public key".to_string());
        } else {
            return Err("is not an RSA or Ed25519 public key in PEM".to_string());
        };
        self.public = Some(public);
        Ok(())
    }

    /// Require tokens to name `audience` in `aud` (`JWT_AUDIENCE`).
    pub fn set_jwt_audience(&mut self, audience: &str) {
        self.audience = Some(audience.to_string());
    }

    /// Require tokens to carry `iss: issuer` (`JWT_ISSUER`).
    pub fn set_jwt_issuer(&mut self, issuer: &str) {
        self.issuer = Some(issuer.to_string());
    }

    /// Whether any credential is configured (otherwise: open mode).
    pub fn enabled(&self) -> bool {
        !self.keys.is_empty() || self.hmac.is_some() || self.public.is_some()
    }

    /// Whether bearer tokens are accepted.
    pub fn jwt_enabled(&self) -> bool {
        self.hmac.is_some() || self.public.is_some()
    }

    /// Whether API keys are accepted.
    pub fn keys_enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Owner ids and roles of the configured keys (for the start-up log).
    pub fn key_fingerprints(&self) -> Vec<(String, Role)> {
        self.keys.iter().map(|k| (owner_of(&k.digest), k.role)).collect()
    }

    /// Authenticate by `X-API-Key` or bearer token (the key is tried first when both are
    /// given; either must be valid on its own).
    pub fn authenticate(&self, api_key: Option<&str>, bearer: Option<&str>) -> Result<Principal, AuthError> {
        match (api_key, bearer) {
            (Some(key), _) => self.check_key(key),
            (None, Some(token)) => self.check_jwt(token),
            (None, None) => Err(AuthError("credentials are required: an X-API-Key header or a bearer token")),
        }
    }

    fn check_key(&self, key: &str) -> Result<Principal, AuthError> {
        let digest = sha256(key.as_bytes());
        let mut found: Option<Role> = None;
        // Every key is compared, whatever matched before.
        for k in &self.keys {
            if same_digest(&k.digest, &digest) {
                found = Some(k.role);
            }
        }
        match found {
            Some(role) => Ok(Principal { owner: owner_of(&digest), role }),
            None => Err(AuthError("invalid API key")),
        }
    }

    fn check_jwt(&self, token: &str) -> Result<Principal, AuthError> {
        let bad = AuthError("invalid or expired bearer token");
        if !self.jwt_enabled() {
            return Err(AuthError("bearer tokens are not accepted; use an X-API-Key header"));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| bad.clone())?;
        // The key is chosen by the algorithm's family, among the configured ones only.
        let key = match (header.alg, &self.hmac, &self.public) {
            (Algorithm::HS256, Some(secret), _) => secret,
            (alg, _, Some(public)) if alg == public.alg => &public.key,
            _ => return Err(bad),
        };
        let mut validation = Validation::new(header.alg);
        validation.leeway = JWT_LEEWAY_S;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        match &self.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|_| bad.clone())?;
        let role = match data.claims.role.as_deref() {
            None => Role::User,
            Some(r) => Role::parse(r).ok_or(AuthError("the token's role claim is not admin or user"))?,
        };
        if data.claims.sub.is_empty() || data.claims.sub.len() > 256 {
            return Err(bad);
        }
        Ok(Principal { owner: owner::jwt(&data.claims.sub), role })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_match_by_digest() {
        let keys = Auth::parse_keys("adminkey1:admin, userkey22:user", ',').unwrap();
        let mut auth = Auth::default();
        auth.add_keys(keys).unwrap();
        assert!(auth.enabled() && !auth.jwt_enabled());
        let p = auth.authenticate(Some("userkey22"), None).unwrap();
        assert_eq!(p.role, Role::User);
        assert_eq!(p.owner, key_owner("userkey22"));
        // Owner ids are stored with every job: the first 8 bytes of SHA-256("test-key"), hex
        // (Python's hashlib).
        assert_eq!(key_owner("test-key"), "key:62af8704764faf8e");
        assert!(same_digest(&sha256(b"a"), &sha256(b"a")) && !same_digest(&sha256(b"a"), &sha256(b"b")));
        assert!(p.owner.starts_with("key:") && p.owner.len() == 20);
        assert_eq!(auth.authenticate(Some("adminkey1"), None).unwrap().role, Role::Admin);
        assert!(auth.authenticate(Some("userkey2"), None).is_err());
        assert!(auth.authenticate(None, None).is_err());
        assert!(auth.authenticate(None, Some("a.b.c")).is_err());
    }

    #[test]
    fn bad_key_entries_are_refused_without_echoing_the_key() {
        for (text, what) in [
            ("secretkey1:root", "role"),
            ("secretkey1", "key:role"),
            ("short:user", "at least 8"),
            ("secret key:user", "at least 8"),
        ] {
            let err = Auth::parse_keys(text, ',').unwrap_err();
            assert!(err.contains(what), "{text}: {err}");
            assert!(!err.contains("secret"), "{err}");
        }
        let file = "# comment\nfilekey001:admin # trailing\n\n  filekey002:user\n";
        assert_eq!(Auth::parse_keys(file, '\n').unwrap().len(), 2);
        let mut auth = Auth::default();
        let err = auth.add_keys(Auth::parse_keys("samekey01:user,samekey01:admin", ',').unwrap()).unwrap_err();
        assert!(err.contains("twice") && !err.contains("samekey01"));
    }

    fn b64url(bytes: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// An RS256 token, signed by hand (no JWT library on the signing side).
    fn rs256(pair: &aws_lc_rs::rsa::KeyPair, claims: &serde_json::Value) -> String {
        let message =
            format!("{}.{}", b64url(br#"{"alg":"RS256","typ":"JWT"}"#), b64url(claims.to_string().as_bytes()));
        let mut sig = vec![0u8; pair.public_modulus_len()];
        let rng = aws_lc_rs::rand::SystemRandom::new();
        pair.sign(&aws_lc_rs::signature::RSA_PKCS1_SHA256, &rng, message.as_bytes(), &mut sig).unwrap();
        format!("{message}.{}", b64url(&sig))
    }

    #[test]
    fn rs256_tokens_verify_with_the_public_key_and_other_families_do_not() {
        use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
        use aws_lc_rs::signature::KeyPair;
        use base64::Engine;
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let spki: PublicKeyX509Der<'_> = pair.public_key().as_der().unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(spki.as_ref());
        let pem = format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n");
        let mut auth = Auth::default();
        auth.set_jwt_public_key(pem.as_bytes()).unwrap();
        let exp = jsonwebtoken::get_current_timestamp() + 600;
        let claims = serde_json::json!({"sub": "frank", "exp": exp, "role": "admin"});
        let p = auth.authenticate(None, Some(&rs256(&pair, &claims))).unwrap();
        assert_eq!(p, Principal { owner: "jwt:frank".into(), role: Role::Admin });
        // HS256 with the public key as the HMAC secret: algorithm confusion.
        let confused = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(pem.as_bytes()),
        )
        .unwrap();
        assert!(auth.authenticate(None, Some(&confused)).is_err());
        let other = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        assert!(auth.authenticate(None, Some(&rs256(&other, &claims))).is_err());
        let expired = serde_json::json!({"sub": "frank", "exp": exp - 1200});
        assert!(auth.authenticate(None, Some(&rs256(&pair, &expired))).is_err());
    }

    fn hs256(secret: &[u8], claims: &serde_json::Value) -> String {
        let key = jsonwebtoken::EncodingKey::from_secret(secret);
        jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::HS256), claims, &key).unwrap()
    }

    #[test]
    fn token_subjects_never_equal_a_keys_owner() {
        let mut auth = Auth::default();
        auth.add_keys(Auth::parse_keys("userkey22:user", ',').unwrap()).unwrap();
        auth.set_jwt_secret(&[7u8; 32]).unwrap();
        let key_owner = auth.authenticate(Some("userkey22"), None).unwrap().owner;
        let exp = jsonwebtoken::get_current_timestamp() + 600;
        let token = hs256(&[7u8; 32], &serde_json::json!({"sub": key_owner, "exp": exp}));
        let p = auth.authenticate(None, Some(&token)).unwrap();
        assert_eq!(p.owner, format!("jwt:{key_owner}"));
        assert_ne!(p.owner, key_owner);
        assert!(!owner::is_key(&p.owner) && owner::is_key(&key_owner));
    }

    #[test]
    fn audience_and_issuer_are_required_when_set() {
        let secret = [7u8; 32];
        let exp = jsonwebtoken::get_current_timestamp() + 600;
        let mut auth = Auth::default();
        auth.set_jwt_secret(&secret).unwrap();
        let plain = hs256(&secret, &serde_json::json!({"sub": "ann", "exp": exp}));
        let with_aud = hs256(&secret, &serde_json::json!({"sub": "ann", "exp": exp, "aud": "gw"}));
        // Unset: aud and iss are not looked at.
        assert!(auth.authenticate(None, Some(&plain)).is_ok());
        assert!(auth.authenticate(None, Some(&with_aud)).is_ok());
        auth.set_jwt_audience("gw");
        auth.set_jwt_issuer("https://idp.example");
        let ok = serde_json::json!({"sub": "ann", "exp": exp, "aud": "gw", "iss": "https://idp.example"});
        assert_eq!(auth.authenticate(None, Some(&hs256(&secret, &ok))).unwrap().owner, "jwt:ann");
        let list_aud = serde_json::json!({"sub": "ann", "exp": exp, "aud": ["x", "gw"], "iss": "https://idp.example"});
        assert!(auth.authenticate(None, Some(&hs256(&secret, &list_aud))).is_ok());
        for bad in [
            serde_json::json!({"sub": "ann", "exp": exp, "iss": "https://idp.example"}),
            serde_json::json!({"sub": "ann", "exp": exp, "aud": "other", "iss": "https://idp.example"}),
            serde_json::json!({"sub": "ann", "exp": exp, "aud": "gw"}),
            serde_json::json!({"sub": "ann", "exp": exp, "aud": "gw", "iss": "https://evil.example"}),
        ] {
            assert!(auth.authenticate(None, Some(&hs256(&secret, &bad))).is_err(), "{bad}");
        }
    }

    #[test]
    fn jwt_secret_and_pem_are_checked() {
        let mut auth = Auth::default();
        assert!(auth.set_jwt_secret(b"short").is_err());
        auth.set_jwt_secret(&[7u8; 32]).unwrap();
        assert!(auth.jwt_enabled() && !auth.keys_enabled());
        assert!(auth.set_jwt_public_key(b"not a pem").is_err());
        assert!(!format!("{auth:?}").contains("7, 7"));
    }
}
