//! The Batch API lane of `classify` (`--batch-api`): half the price of the live API for files
//! that can wait, resumable across interruptions. Declarations and re-exports only.

mod lane;
pub mod openai;
mod state;

pub use lane::{BatchLaneError, classify_file};
pub use openai::BatchApiError;
pub use state::{RunState, StateError};
