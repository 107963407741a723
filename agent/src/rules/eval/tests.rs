//! Unit tests for the evaluator.
