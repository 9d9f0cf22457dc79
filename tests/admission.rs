//! Seed 003, admission to hospital (placeholder until the story is written).

mod harness;
