//! Placeholder. TO BE IMPLEMENTED (helper).
/// Size limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits;
/// Framing errors.
#[derive(Debug, thiserror::Error)]
#[error("frame")]
pub struct FrameError;
