//! Shards: one pinned OS thread per core, each a monoio runtime.
