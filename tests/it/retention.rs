//! Retention and erasure.
