"""pytest fixtures shared by every test area go here; shared helper functions live in tests/helpers/."""
