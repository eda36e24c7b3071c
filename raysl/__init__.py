"""raysl."""
