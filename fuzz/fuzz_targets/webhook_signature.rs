//! Webhook signatures (`webhooks::sign`): arbitrary secrets, headers and bodies never
//! panic in `SigningKey::parse` or `verify`; a signature made by the signer verifies; the
//! body with any one bit flipped does not; another message id or timestamp does not.
//!
//! Input: secret, message id, timestamp header, signature header and body, separated by
//! NUL bytes (missing parts are empty).
#![no_main]

use comfyui_gateway::webhooks::sign::{self, SignedHeaders, SigningKey, VerifyError};
use libfuzzer_sys::fuzz_target;

const NOW: i64 = 1_700_000_000;
const TOLERANCE: i64 = 300;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(5, |&b| b == 0);
    let mut next = || String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let (secret, id, timestamp, signature) = (next(), next(), next(), next());
    let body = data.splitn(5, |&b| b == 0).nth(4).unwrap_or_default();

    let Ok(key) = SigningKey::parse(&secret) else { return };
    // Received headers as given: any answer but a panic.
    let given = SignedHeaders { id: &id, timestamp: &timestamp, signature: &signature };
    let _ = sign::verify(&key, given, body, NOW, TOLERANCE);
    let _ = sign::x_signature(&key, body);

    // Signed by us, now-ish: verifies, also among other entries (key rotation).
    let ts = NOW - i64::from(data.len() as u8);
    let signed = sign::standard_signature(&key, &id, ts, body);
    let ts_text = ts.to_string();
    let headers = SignedHeaders { id: &id, timestamp: &ts_text, signature: &signed };
    assert_eq!(sign::verify(&key, headers, body, NOW, TOLERANCE), Ok(()));
    let several = format!("{signature} {signed}");
    assert_eq!(sign::verify(&key, SignedHeaders { signature: &several, ..headers }, body, NOW, TOLERANCE), Ok(()));

    // One bit of the body flipped: never verifies.
    if !body.is_empty() {
        let bit = usize::from(data[0]) % (body.len() * 8);
        let mut mutated = body.to_vec();
        mutated[bit / 8] ^= 1 << (bit % 8);
        assert_eq!(sign::verify(&key, headers, &mutated, NOW, TOLERANCE), Err(VerifyError::NoMatch));
    }
    // Another id or timestamp: never verifies.
    let other_id = format!("{id}x");
    assert_eq!(
        sign::verify(&key, SignedHeaders { id: &other_id, ..headers }, body, NOW, TOLERANCE),
        Err(VerifyError::NoMatch)
    );
    let other_ts = (ts - 1).to_string();
    assert_eq!(
        sign::verify(&key, SignedHeaders { timestamp: &other_ts, ..headers }, body, NOW, TOLERANCE),
        Err(VerifyError::NoMatch)
    );
});
