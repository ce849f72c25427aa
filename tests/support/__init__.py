"""What the tests share: free ports, starting a relay, its files (support/relay.py), and the
config texts they start it with (support/configs.py). Tests import from here, never from
conftest; tests/conftest.py keeps only fixtures."""
