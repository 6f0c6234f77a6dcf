//! flow-scheduler
