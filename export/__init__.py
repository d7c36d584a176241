"""export: command-line tools that turn an ssov checkpoint into deployable model packages."""
