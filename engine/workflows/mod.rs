//! Workflow templates and input validation (filled in by the workflows work).
