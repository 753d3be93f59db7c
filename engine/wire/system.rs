//! Everything else the API answers: the error envelope, health and probes, backends,
//! capabilities, workflows, the audit log.
