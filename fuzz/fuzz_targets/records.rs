//! Stored records as the store reads them (`store::codec` and the domain types): any bytes
//! decode to a record or a clean error, never a panic, and a record that decodes is
//! written back in a form that decodes to the same encoding again (decode ∘ encode is
//! stable, older versions upgraded).
//!
//! Input: one byte choosing the record kind (`store::fuzzing::Record::ALL`), then the
//! record's bytes as stored (format-version byte first).
#![no_main]

use comfyui_gateway::store::fuzzing::{self, Record};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, bytes)) = data.split_first() else { return };
    let kind = Record::ALL[usize::from(kind) % Record::ALL.len()];
    if let Ok(encoded) = fuzzing::decode(kind, bytes) {
        let again = fuzzing::decode(kind, &encoded).unwrap_or_else(|e| panic!("{kind:?}: re-encoded record: {e}"));
        assert_eq!(again, encoded, "{kind:?}: encoding is not stable");
    }
});
