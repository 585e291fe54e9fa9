//! pushgate load generator (filled in later).
fn main() {}
