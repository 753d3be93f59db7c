//! Jobs as the API and webhooks show them: the job, its outputs, its event log, its
//! webhook deliveries.
