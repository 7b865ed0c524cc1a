"""Errors a user can act on. The CLI turns each into exit code 2 with its message."""


class AuditInputError(ValueError):
    """Bad user input: the message names the bad value and what would be valid."""


class CheckpointMismatchError(AuditInputError):
    """A checkpoint whose tensors do not fit the architecture."""

    def __init__(self, source: str, architecture: str, missing: list[str], unexpected: list[str],
                 mismatched: list[str] | None = None):
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched or []
        parts = [f"checkpoint {source!r} does not match architecture {architecture!r}"]
        if missing:
            parts.append(f"missing keys ({len(missing)}): {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}")
        if self.mismatched:
            parts.append(f"shape mismatches ({len(self.mismatched)}): {', '.join(self.mismatched[:8])}")
        super().__init__("; ".join(parts))
