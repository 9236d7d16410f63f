"""The browser scanner page served at /scanner/ (engine/web/scanner.py); package data only."""
