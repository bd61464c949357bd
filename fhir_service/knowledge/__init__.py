"""Knowledge artifacts: loading, validation at start-up, and the repository that serves them."""
