//! The flowplane data plane.
#![deny(unsafe_code)]

pub mod output;

pub use output::{
    AggEntry, Alert, DimensionWindow, KeyValue, Sink, SinkError, Totals, WindowBatch,
};
