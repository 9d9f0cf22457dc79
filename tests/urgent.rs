//! Urgent posts against the real server (placeholder while it is written).

mod harness;
