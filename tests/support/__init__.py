"""What the tests share: free ports, starting a relay, its files (tests/support/relay.py).
tests/conftest.py re-exports these names for the tests that do `from conftest import ...`."""
