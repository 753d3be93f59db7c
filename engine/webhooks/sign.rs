//! Webhook signatures: the Standard Webhooks scheme (`webhook-signature: v1,<base64
//! HMAC-SHA256 of "<id>.<timestamp>.<body>">`) and the seed's `X-Signature: sha256=<hex
//! HMAC-SHA256 of the body>`, both with the key of `WEBHOOK_SECRET`; and the receiver's
//! check, used by the tests (and a fuzz target).

use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// The prefix of a secret in the Standard Webhooks form: base64 key bytes follow.
pub const SECRET_PREFIX: &str = "whsec_";

/// The HMAC key of `WEBHOOK_SECRET`. Its `Debug` never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({} bytes)", self.0.len())
    }
}

impl SigningKey {
    /// `whsec_<base64>` is the base64-decoded key; any other text is used as raw bytes.
    ///
    /// # Errors
    /// An empty secret, or a `whsec_` secret whose rest is not base64 of at least one byte.
    pub fn parse(secret: &str) -> Result<SigningKey, String> {
        if secret.is_empty() {
            return Err("is empty".to_string());
        }
        let Some(b64) = secret.strip_prefix(SECRET_PREFIX) else {
            return Ok(SigningKey(secret.as_bytes().to_vec()));
        };
        let key =
            STANDARD.decode(b64).map_err(|e| format!("starts with {SECRET_PREFIX} but the rest is not base64: {e}"))?;
        if key.is_empty() {
            return Err(format!("has no key bytes after {SECRET_PREFIX}"));
        }
        Ok(SigningKey(key))
    }

    fn mac(&self, parts: &[&[u8]]) -> hmac::Tag {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.0);
        let mut ctx = hmac::Context::with_key(&key);
        for p in parts {
            ctx.update(p);
        }
        ctx.sign()
    }
}

/// The `webhook-signature` value of one message: `v1,<base64 HMAC-SHA256 of
/// "<msg_id>.<ts_secs>.<body>">`.
pub fn standard_signature(key: &SigningKey, msg_id: &str, ts_secs: i64, body: &[u8]) -> String {
    let tag = key.mac(&[msg_id.as_bytes(), b".", ts_secs.to_string().as_bytes(), b".", body]);
    format!("v1,{}", STANDARD.encode(tag.as_ref()))
}

/// The `X-Signature` value of a body: `sha256=<lower-case hex HMAC-SHA256 of the body>`.
pub fn x_signature(key: &SigningKey, body: &[u8]) -> String {
    let tag = key.mac(&[body]);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// The three Standard Webhooks headers of a received message, as text.
#[derive(Debug, Clone, Copy)]
pub struct SignedHeaders<'a> {
    /// `webhook-id`.
    pub id: &'a str,
    /// `webhook-timestamp` (Unix seconds).
    pub timestamp: &'a str,
    /// `webhook-signature`: space-separated `v<n>,<base64>` entries.
    pub signature: &'a str,
}

/// Why a received message does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// `webhook-timestamp` is not an integer.
    #[error("webhook-timestamp is not a Unix time in seconds")]
    BadTimestamp,
    /// `webhook-timestamp` is further than the tolerance from now.
    #[error("webhook-timestamp is {0} s away from now, beyond the tolerance")]
    Stale(i64),
    /// No `v1` signature matches.
    #[error("no v1 signature matches")]
    NoMatch,
}

/// Check a received message as a Standard Webhooks receiver does: the timestamp within
/// `tolerance_secs` of `now_secs`, and one `v1` signature equal (in constant time) to the
/// one computed with `key`.
///
/// # Errors
/// See [`VerifyError`].
pub fn verify(
    key: &SigningKey,
    headers: SignedHeaders<'_>,
    body: &[u8],
    now_secs: i64,
    tolerance_secs: i64,
) -> Result<(), VerifyError> {
    let ts: i64 = headers.timestamp.trim().parse().map_err(|_| VerifyError::BadTimestamp)?;
    let skew = now_secs.saturating_sub(ts);
    if skew.saturating_abs() > tolerance_secs {
        return Err(VerifyError::Stale(skew));
    }
    let expected = key.mac(&[headers.id.as_bytes(), b".", ts.to_string().as_bytes(), b".", body]);
    let matches = headers.signature.split(' ').filter_map(|entry| entry.split_once(',')).any(|(version, sig)| {
        version == "v1"
            && STANDARD
                .decode(sig)
                .is_ok_and(|given| aws_lc_rs::constant_time::verify_slices_are_equal(&given, expected.as_ref()).is_ok())
    });
    if matches { Ok(()) } else { Err(VerifyError::NoMatch) }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The Standard Webhooks test vector (the specification's reference libraries test it).
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn reproduces_the_standard_webhooks_test_vector() {
        let key = SigningKey::parse(SECRET).unwrap();
        assert_eq!(standard_signature(&key, ID, TS, BODY), SIGNATURE);
        let headers = SignedHeaders { id: ID, timestamp: "1614265330", signature: SIGNATURE };
        assert_eq!(verify(&key, headers, BODY, TS, 300), Ok(()));
        // Several signatures (key rotation): any v1 match is enough.
        let two = format!("v1,bm9wZQ== v2,xyz {SIGNATURE}");
        assert_eq!(verify(&key, SignedHeaders { signature: &two, ..headers }, BODY, TS + 10, 300), Ok(()));
    }

    #[test]
    fn verify_refuses_tampering_staleness_and_other_keys() {
        let key = SigningKey::parse(SECRET).unwrap();
        let headers = SignedHeaders { id: ID, timestamp: "1614265330", signature: SIGNATURE };
        assert_eq!(verify(&key, headers, br#"{"test": 2432232315}"#, TS, 300), Err(VerifyError::NoMatch));
        assert_eq!(
            verify(&key, SignedHeaders { id: "msg_other", ..headers }, BODY, TS, 300),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            verify(&key, SignedHeaders { timestamp: "1614265331", ..headers }, BODY, TS, 300),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(verify(&key, headers, BODY, TS + 301, 300), Err(VerifyError::Stale(301)));
        assert_eq!(verify(&key, headers, BODY, TS - 301, 300), Err(VerifyError::Stale(-301)));
        assert_eq!(
            verify(&key, SignedHeaders { timestamp: "soon", ..headers }, BODY, TS, 300),
            Err(VerifyError::BadTimestamp)
        );
        let v2 = SIGNATURE.replacen("v1,", "v2,", 1);
        assert_eq!(verify(&key, SignedHeaders { signature: &v2, ..headers }, BODY, TS, 300), Err(VerifyError::NoMatch));
        let other = SigningKey::parse("whsec_AAAAAAAAAAAAAAAAAAAAAA==").unwrap();
        assert_eq!(verify(&other, headers, BODY, TS, 300), Err(VerifyError::NoMatch));
    }

    #[test]
    fn secrets_parse_as_base64_with_the_prefix_and_raw_bytes_without() {
        let key = SigningKey::parse(SECRET).unwrap();
        assert_eq!(key.0, STANDARD.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap());
        assert_eq!(SigningKey::parse("plain secret").unwrap().0, b"plain secret");
        assert!(SigningKey::parse("").is_err());
        assert!(SigningKey::parse("whsec_").is_err());
        assert!(SigningKey::parse("whsec_not base64!").is_err());
        assert!(!format!("{key:?}").contains("MfKQ"), "Debug hides the key");
    }

    #[test]
    fn x_signature_is_hex_hmac_of_the_body() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let key = SigningKey::parse("Jefe").unwrap();
        assert_eq!(
            x_signature(&key, b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
