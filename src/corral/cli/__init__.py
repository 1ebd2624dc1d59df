"""`corral`, the user command line."""
