"""Test support shared by every app's tests: real servers, fresh namespaces, schema fuzzing."""
