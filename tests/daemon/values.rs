//! Value representations (docs/values.md), both directions.
