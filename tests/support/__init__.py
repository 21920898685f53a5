"""Plain helpers that tests of several folders share (fixtures live in tests/fixtures)."""
