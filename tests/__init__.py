"""Pylight's test suite, one package: conftest and the support modules are imported as tests.*."""
