"""The browser scanner page served at /scanner/ (engine/scanner.py); package data only."""
