"""Everything that touches a repository on disk goes through :mod:`bulwark.git.runner`."""
