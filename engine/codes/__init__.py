"""Code formats: the personal QR payload, verdicts and reasons (the one list), trust lists, key files, QR images."""
