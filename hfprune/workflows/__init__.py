"""Task workflows built on the core: each prunes, evaluates and saves one kind of model end to end."""
