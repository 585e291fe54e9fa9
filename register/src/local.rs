//! In-process directory (filled in by the register implementation).

/// The in-process [`crate::Directory`].
#[derive(Debug, Default)]
pub struct LocalDirectory {}
