"""Benches (not tests): timings live here, never in test asserts. See README "Bench"."""
