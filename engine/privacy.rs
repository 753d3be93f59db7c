//! Privacy mode (`PRIVACY_MODE=true`): no prompt text reaches the database file or the logs.
//!
//! A job's prompt and inputs must stay durable (a queued job is rendered again after a
//! restart), so they are sealed at rest: AES-256-GCM with a key kept outside the database
//! (`PRIVACY_KEY_FILE`, created with mode 0600 on first use). Sealed fields read
//! `sealed:v1:<base64 nonce + ciphertext>`; the service reveals them for API answers and
//! the runner opens the prompt only to submit it. Outputs lose their PNG text chunks
//! (ComfyUI writes the prompt there), and error messages stored with a job have the job's
//! input texts redacted.

use std::borrow::Cow;
use std::path::Path;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::Value;

/// Prefix of a sealed field.
pub const SEALED_PREFIX: &str = "sealed:v1:";
/// Bytes of the key.
const KEY_LEN: usize = 32;
/// Input strings shorter than this are not redacted (they would mangle unrelated text).
const REDACT_LEN_MIN: usize = 4;

/// Seals and opens fields with the privacy key.
pub struct Sealer {
    key: LessSafeKey,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    /// Read the key at `path`, or create it (32 random bytes, mode 0600) if absent.
    pub fn load_or_create(path: &Path) -> Result<Sealer, String> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; KEY_LEN];
                aws_lc_rs::rand::fill(&mut key).map_err(|_| "no randomness for a new key".to_string())?;
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                }
                place_new_key(path, &key)?
            }
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        if bytes.len() != KEY_LEN {
            return Err(format!("{} must hold exactly {KEY_LEN} bytes", path.display()));
        }
        let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| "unusable key".to_string())?;
        Ok(Sealer { key: LessSafeKey::new(key) })
    }

    /// Seal a field (a fresh random nonce each time).
    pub fn seal(&self, plain: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        // Randomness failing is not recoverable in any useful way.
        aws_lc_rs::rand::fill(&mut nonce).expect("system randomness");
        let mut data = plain.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut data)
            .expect("AES-GCM sealing of an in-memory buffer");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        format!("{SEALED_PREFIX}{}", BASE64.encode(out))
    }

    /// Open a field: a sealed one is decrypted, any other is returned as it is.
    pub fn open<'a>(&self, stored: &'a str) -> Result<Cow<'a, str>, String> {
        let Some(b64) = stored.strip_prefix(SEALED_PREFIX) else { return Ok(Cow::Borrowed(stored)) };
        let raw = BASE64.decode(b64).map_err(|_| "sealed field is not base64".to_string())?;
        if raw.len() < NONCE_LEN {
            return Err("sealed field is too short".into());
        }
        let (nonce, data) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| "bad nonce".to_string())?;
        let mut data = data.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::empty(), &mut data)
            .map_err(|_| "sealed field does not open with PRIVACY_KEY_FILE's key".to_string())?;
        String::from_utf8(plain.to_vec()).map(Cow::Owned).map_err(|_| "sealed field is not UTF-8".into())
    }
}

/// Put a newly made `key` at `path` and return the key that is there: `key`, or the one
/// another process put there first. The key is written whole under a name of this
/// process's own (mode 0600 from the start), then linked into place: a crash never leaves
/// a short key file that refuses every start, and a link never replaces a file, so of two
/// processes creating the key at once one key wins and both use it (a rename would let the
/// second replace the key the first already seals jobs with, making them unreadable).
fn place_new_key(path: &Path, key: &[u8]) -> Result<Vec<u8>, String> {
    let cannot = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".creating.{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let placed = write_private(&tmp, key).and_then(|()| match std::fs::hard_link(&tmp, path) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(e),
        // A file system without hard links: no other way to place it whole.
        Err(_) => std::fs::rename(&tmp, path),
        Ok(()) => Ok(()),
    });
    let _ = std::fs::remove_file(&tmp);
    match placed {
        Ok(()) => Ok(key.to_vec()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
        }
        Err(e) => Err(cannot(e)),
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Every string of an inputs JSON object worth redacting, longest first.
pub fn input_texts(inputs_json: &str) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(s) if s.chars().count() >= REDACT_LEN_MIN => out.push(s.clone()),
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            Value::Object(m) => m.values().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&serde_json::from_str(inputs_json).unwrap_or(Value::Null), &mut out);
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out.dedup();
    out
}

/// `text` with every occurrence of `secrets` replaced by `[redacted]`.
pub fn redact(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "[redacted]");
        }
    }
    out
}

/// A PNG without its text chunks (`tEXt`, `zTXt`, `iTXt`: where ComfyUI writes the prompt
/// and workflow), or None if `bytes` is not a well-formed PNG.
pub fn strip_png_text(bytes: &[u8]) -> Option<Vec<u8>> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    let mut rest = bytes.strip_prefix(SIGNATURE)?;
    let mut out = SIGNATURE.to_vec();
    while !rest.is_empty() {
        let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let total = 12usize.checked_add(len)?;
        let chunk = rest.get(..total)?;
        let kind = &chunk[4..8];
        if !matches!(kind, b"tEXt" | b"zTXt" | b"iTXt") {
            out.extend_from_slice(chunk);
        }
        rest = &rest[total..];
        if kind == b"IEND" {
            break;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two processes creating the key at once: the second to place its key finds the
    /// first's and uses it; the first's key (with which it may already seal jobs) stays.
    #[test]
    fn a_key_created_meanwhile_by_another_process_is_kept_and_used() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("privacy.key");
        std::fs::write(&path, [1u8; KEY_LEN]).unwrap();
        let used = place_new_key(&path, &[2u8; KEY_LEN]).unwrap();
        assert_eq!(used, [1u8; KEY_LEN], "the key already there is the one used");
        assert_eq!(std::fs::read(&path).unwrap(), [1u8; KEY_LEN], "and it is not replaced");
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary file is left");
    }

    #[test]
    fn seal_and_open_with_a_persisted_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k/privacy.key");
        let sealer = Sealer::load_or_create(&path).unwrap();
        let sealed = sealer.seal("a secret prompt");
        assert!(sealed.starts_with(SEALED_PREFIX) && !sealed.contains("secret"));
        assert_ne!(sealed, sealer.seal("a secret prompt"), "fresh nonce each time");
        let again = Sealer::load_or_create(&path).unwrap();
        assert_eq!(again.open(&sealed).unwrap(), "a secret prompt", "the key survives a restart");
        assert_eq!(again.open("{\"plain\":1}").unwrap(), "{\"plain\":1}");
        let mut tampered = sealed.clone();
        tampered.pop();
        tampered.push('A');
        assert!(again.open(&tampered).is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let tmp = format!("privacy.key.creating.{}", std::process::id());
        assert!(!dir.path().join("k").join(tmp).exists(), "linked into place, the temporary removed");
        // A leftover of a crash during creation is replaced, not read.
        let fresh = dir.path().join("fresh.key");
        std::fs::write(dir.path().join(format!("fresh.key.creating.{}", std::process::id())), b"half").unwrap();
        let _ = Sealer::load_or_create(&fresh).unwrap();
        assert_eq!(std::fs::read(&fresh).unwrap().len(), KEY_LEN);
        std::fs::write(dir.path().join("short"), b"x").unwrap();
        assert!(Sealer::load_or_create(&dir.path().join("short")).is_err());
    }

    #[test]
    fn redaction_and_png_text_stripping() {
        let texts = input_texts(r#"{"prompt": "a red fox", "n": 3, "x": "ab", "l": ["in a list"]}"#);
        assert_eq!(texts, vec!["in a list".to_string(), "a red fox".to_string()]);
        assert_eq!(redact("node failed on 'a red fox'", &texts), "node failed on '[redacted]'");

        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let chunk = |kind: &[u8], data: &[u8]| {
            let mut c = (data.len() as u32).to_be_bytes().to_vec();
            c.extend_from_slice(kind);
            c.extend_from_slice(data);
            c.extend_from_slice(&[0, 0, 0, 0]);
            c
        };
        png.extend(chunk(b"IHDR", &[0; 13]));
        png.extend(chunk(b"tEXt", b"prompt\0a red fox"));
        png.extend(chunk(b"IDAT", &[1, 2, 3]));
        png.extend(chunk(b"IEND", &[]));
        let stripped = strip_png_text(&png).unwrap();
        assert!(!stripped.windows(7).any(|w| w == b"red fox"));
        assert_eq!(stripped.len(), png.len() - 12 - 16);
        assert!(strip_png_text(b"not a png").is_none());
        assert!(strip_png_text(&png[..png.len() - 3]).is_none(), "truncated");
    }
}
