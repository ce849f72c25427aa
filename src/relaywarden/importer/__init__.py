"""Importers: configurations of other mail servers turned into a relaywarden config."""
