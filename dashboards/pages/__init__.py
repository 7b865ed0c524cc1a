"""One module per dashboard page; each builds (template name, context) from a `Views` and a `Links`."""
