//! Scaling a revision's backends: [`scaler`] is the seam (a [`Scaler`](scaler::Scaler) is told
//! how many endpoints to run and reports back only through the revision), [`kpa`] is the
//! decision (Knative's KPA), [`autoscaler`] the loop that feeds one into the other, [`process`]
//! the scaler that runs local processes, and [`set`] keeps a gateway's scalers in step with its
//! config.

pub mod autoscaler;
pub mod keep_warm;
pub mod kpa;
pub mod port_holder;
pub mod process;
pub mod scaler;
pub mod set;
