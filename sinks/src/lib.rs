//! Sinks for closed windows: Valkey (the hot 5-minute window) and Kafka (aggregates and alerts).
