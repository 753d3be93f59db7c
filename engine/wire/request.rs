//! Request bodies: what `POST /jobs`, `POST|PUT /workflows` and `POST /workflows/import`
//! take, parsed with [`super::parse`].
