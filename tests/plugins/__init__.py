"""Test plugins, loaded with `[plugins] load = tests.plugins.<name>` like a user's own module."""
