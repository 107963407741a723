//! Unit tests for the manifest model.
