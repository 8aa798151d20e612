//! Configuration: TOML file plus `HEARTH_SECTION__KEY` environment overrides.
