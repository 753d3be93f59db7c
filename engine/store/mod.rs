//! The durable store (filled in by the store work).
